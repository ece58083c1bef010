"""QK-subspace interventions (the paper's open question 3): remove or scale the top-k singular components of one
head's ``M = W_Q^h (W_K^h)^T`` (the decomposition the ``svd`` table stores), inside the attention function.

With the thin QRs ``W_Q^h = Qq Rq`` and ``W_K^h = Qk Rk`` and the core SVD ``Rq Rk^T = U S V^T`` of
:func:`precompute.analyses.spectra.core_svd`, the content part of a query, ``q - b_q = W_Q^T x``, has the coordinates
``x . u_k = (q - b_q) . a_k`` with ``a_k = Rq^{-1} U[:, k]``, and a key ``x . v_k = (k - b_k) . b_k`` with
``b_k = Rk^{-1} V[:, k]``. Replacing the query by ``q + (f - 1) sum_k sigma_k ((q - b_q) . a_k) b_k`` multiplies
the content term ``sigma_k (x_i . u_k)(x_j . v_k)`` of exactly those components by ``f`` (``f = 0`` removes them)
and leaves every other logit term alone; the key bias' share, constant over keys, is given back to the logits so
that they are exact, not only the softmax (:meth:`precompute.kernels.state.BatchState.edit_queries`). Removing all
head_dim components leaves exactly the bias terms of the logits (tests).

Defined where ``W_Q W_K^T`` is the whole content interaction of the logit: absolute positions and additive
relative position biases (BERT-style, DistilBERT, MPNet, T5). Rotary models rotate queries by position before
the product and DeBERTa's position terms share the query projection, so they are refused. The weights, biases and
position kind are the model family's facts (:meth:`precompute.families.base.Family.qk_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from precompute.conditions.subspace_specs import aligned_order
from precompute.analyses.spectra import NOTES, SpectraError, core_svd, matrix_note, split_layer

CONTENT_ONLY = ("absolute", "bias")  # position kinds where W_Q W_K^T is the whole content term of the logit


class SubspaceError(ValueError):
    """A subspace intervention this model cannot have (one line, for the CLI)."""


def check_model(lm) -> None:
    """Refuse models where the intervention is not the content term alone (module docstring)."""
    try:
        matrix_note(lm)
    except SpectraError as err:
        raise SubspaceError(f"QK-subspace interventions need the spectra: {err}") from err
    position = lm.architecture.position
    if position not in CONTENT_ONLY:
        raise SubspaceError(f"QK-subspace interventions are defined where W_Q W_K^T is the whole content term of the "
                            f"logit; for this model ({position} positions) the spectra are of the "
                            f"{NOTES[position].split(':')[0]}")


@dataclass(frozen=True)
class HeadFactors:
    """One head's query-space directions a [dh, dh], key-space directions b [dh, dh] (sigma folded in), sorted by
    singular value, with the head's query and key biases and each component's alignment u_k . v_k (the svd table's)."""

    a: torch.Tensor
    b: torch.Tensor
    sigma: torch.Tensor
    query_bias: torch.Tensor | None
    key_bias: torch.Tensor | None
    alignment: torch.Tensor | None = None


def aligned_components(factors: HeadFactors, n: int) -> list[int]:
    """The ``n`` components of one head with the largest sigma-weighted alignment ``sigma_k * (u_k . v_k)`` (largest
    first; ties by singular value order): the components that give the most logit to a token attending to a token
    like itself. Sigma-weighted, not the alignment alone: a component with alignment near 1 and sigma near 0 adds
    nothing to any logit, and removing it would change nothing (docs/patching.md, "Aligned QK subspaces")."""
    return aligned_order(factors.sigma.tolist(), factors.alignment.tolist(), n)


def head_factors(lm, layer: int, head: int) -> HeadFactors:
    """The factors of one head of the loaded model ``lm`` (SubspaceError where the intervention is not defined)."""
    check_model(lm)
    weights = lm.family.qk_weights(lm.model)[layer]
    wq, wk, kv = split_layer(weights, lm.architecture)
    kh, dh = int(kv[head]), wq.shape[-1]
    qq, rq, qk, rk, u, sigma, vh = core_svd(wq[head : head + 1], wk[kh : kh + 1])
    a = torch.linalg.solve_triangular(rq[0], u[0], upper=True)  # Rq^{-1} U
    b = torch.linalg.solve_triangular(rk[0], vh[0].mT, upper=True) * sigma[0]  # Rk^{-1} V S
    alignment = ((u[0].mT @ (qq[0].mT @ qk[0])) * vh[0]).sum(-1)  # u_k . v_k (precompute.analyses.spectra)
    q_bias = None if weights.query_bias is None else weights.query_bias[head * dh : (head + 1) * dh].double().cpu()
    k_bias = None if weights.key_bias is None else weights.key_bias[kh * dh : (kh + 1) * dh].double().cpu()
    return HeadFactors(a, b, sigma[0], q_bias, k_bias, alignment)


def qk_edit(factors: HeadFactors, layer: int, head: int, k: int, factor: float, rows: torch.Tensor, device,
            components: list[int] | None = None):
    """The :class:`~precompute.kernels.state.QKEdit` of the top ``k`` components of one head (or of ``components``,
    indices in singular value order), for ``rows``."""
    from precompute.kernels.state import QKEdit

    which = list(range(k)) if components is None else list(components)
    a, b = factors.a[:, which], factors.b[:, which]
    return QKEdit(
        rows=rows.to(device), layer=layer, head=head, a=a.float().to(device), b=b.float().to(device), factor=factor,
        query_bias=None if factors.query_bias is None else factors.query_bias.float().to(device),
        key_bias_b=None if factors.key_bias is None else (factors.key_bias @ b).float().to(device),
    )
