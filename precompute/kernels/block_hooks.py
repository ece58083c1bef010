"""Forward hooks on a family's components, for one forward pass at a time: the attention block's output projection
(``attn``), the MLP block's output projection (``mlp``) and each layer's output, the residual stream (``resid``).

What the hooks do is read from the batch state in flight (:class:`~precompute.kernels.state.BatchState`):

* **remove** (component ablations): replace ``attn`` or ``mlp`` output rows by zero or by the component's mean
  over the run's pairs (per layer and segment), at every token or at one segment's tokens, per batch row. The
  removal point is the projection's output, before the block adds it to the residual stream (post-LN BERT:
  ``LayerNorm(dense(x) + residual)`` keeps its residual and LayerNorm; pre-LN decoders: the block's
  ``o_proj``/``down_proj`` output before the add);
* **capture** (activation patching): keep the outputs of a clean or corrupted run;
* **patch**: replace the outputs of chosen rows at chosen positions by captured ones;
* **resume**: layers below a patched one return the corrupted run's captured outputs instead of computing them
  (their activations are the corrupted run's anyway), which is where batched patching saves its time.

Head outputs (a head's attention output before the output projection) are captured and patched inside the
attention kernel (:func:`precompute.kernels.eager.attend`), not here.
"""

from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass
from typing import Any

import torch

from precompute.kernels.probe import current_state

COMPONENTS: tuple[str, ...] = ("attn", "mlp")  # what component ablations remove
PATCH_COMPONENTS: tuple[str, ...] = ("resid", "attn", "mlp")  # what activation patching replaces
ALL_TOKENS = -2  # component target: every (non-padding) token; 0..4 = one segment's tokens; -1 = nothing


@dataclass
class PatchOp:
    """Replace the ``kind`` output of ``layer`` (head ``head`` for kind 'head') of the batch rows ``rows`` at
    ``positions`` by ``source`` (both given for those rows only)."""

    kind: str  # 'resid' | 'attn' | 'mlp' | 'head'
    layer: int
    rows: slice  # the batch rows patched (one variant's block of rows = pairs x variants, variant-major)
    positions: torch.Tensor  # [rows, seq] bool
    source: torch.Tensor  # [rows, seq, hidden] (or [rows, seq, head_dim] for 'head')
    head: int | None = None

    def apply(self, out: torch.Tensor) -> None:
        """Patch ``out`` ([batch, seq, dim] of the op's rows, already selected for a head) in place."""
        out[self.rows] = torch.where(self.positions[..., None], self.source.to(out.dtype), out[self.rows])


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden states inside a module's output (a tensor, or the first element of a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def repeat_rows(output: Any, k: int, batch: int) -> Any:
    """A captured output for ``k`` times as many rows (condition-major): every tensor with ``batch`` rows is repeated."""
    if isinstance(output, tuple):
        return tuple(repeat_rows(x, k, batch) for x in output)
    if isinstance(output, torch.Tensor) and output.dim() > 0 and output.shape[0] == batch and k > 1:
        return output.repeat(k, *[1] * (output.dim() - 1))
    return output


def head_outputs(state, layer: int, out: torch.Tensor) -> torch.Tensor:
    """The heads' outputs [batch, head, q, dv] of ``layer`` with the state's head patches applied (and captured when
    asked): called by both attention kernels right after their attention product."""
    ops = [op for op in state.patches if op.kind == "head" and op.layer == layer]
    if ops:
        out = out.clone()
        for op in ops:
            op.apply(out[:, op.head])  # a view of one head: patched in place
    if "head" in state.capture:
        state.captured[("head", layer)] = out
    return out


def _remove(state, kind: str, layer: int, out: torch.Tensor) -> torch.Tensor:
    iv = state.intervention
    target = iv.components[:, layer, COMPONENTS.index(kind)]  # [batch] int
    if not bool((target != -1).any()):
        return out
    seg = state.segments  # [batch, seq]
    where = ((target[:, None] == ALL_TOKENS) & (seg >= 0)) | (seg == target[:, None])  # [batch, seq]
    if iv.component_mode == "zero":
        replacement = torch.zeros_like(out)
    else:  # mean: each token gets its segment's mean output of this layer and component
        means = iv.means[layer, COMPONENTS.index(kind)].to(out.dtype)  # [5, hidden]
        replacement = means[seg.clamp(min=0)]  # [batch, seq, hidden]
    return torch.where(where[..., None], replacement, out)


def _hook(kind: str, layer: int):
    def hook(module, args, output):
        state = current_state()
        out = hidden_of(output)
        if kind in COMPONENTS and state.intervention is not None and state.intervention.components is not None:
            out = _remove(state, kind, layer, out)
        ops = [op for op in state.patches if op.kind == kind and op.layer == layer]
        if ops:
            out = out.clone()
            for op in ops:
                op.apply(out)
        if kind in state.capture:
            state.captured[(kind, layer)] = output if kind == "resid" else out
        return with_hidden(output, out)

    return hook


class ComponentHooks:
    """Installs the component hooks of a loaded model for a ``with`` block and always removes them."""

    def __init__(self, lm):
        self.layers = lm.family.layers(lm.model)
        self.modules: dict[tuple[str, int], torch.nn.Module] = lm.family.component_modules(lm.model)
        self._stack = contextlib.ExitStack()

    def __enter__(self):
        for (kind, layer), module in self.modules.items():
            self._stack.callback(module.register_forward_hook(_hook(kind, layer)).remove)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @contextlib.contextmanager
    def resume_above(self, first: int, outputs: dict[int, Any]):
        """Layers below ``first`` return ``outputs[layer]`` (a captured corrupted output) instead of computing."""
        swapped = self.layers[:first]
        try:
            for i, layer in enumerate(swapped):
                layer.forward = types.MethodType(lambda self, *a, _out=outputs[i], **k: _out, layer)
            yield
        finally:
            for layer in swapped:
                layer.__dict__.pop("forward", None)
