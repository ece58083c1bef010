"""What the families and the kernels share, without torch (so that the families' facts and descriptions, read by
``--help`` and the docs, import without it): where an attention module sits (:class:`Site`) and the error of an
attention call no kernel computes faithfully (:class:`KernelError`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Site:
    """Where an attention module sits: ``role`` 'self' (an encoder or decoder-only layer: summarised and
    ablated), 'decoder' (an encoder-decoder's decoder self-attention) or 'cross' (its cross-attention)."""

    role: str
    layer: int


class KernelError(RuntimeError):
    """An attention call the kernel cannot compute faithfully (message is one line, for the CLI)."""
