"""QK spectra of every attention head, read from the model weights alone (no data).

The content part of head h's attention logit between tokens i and j is the bilinear form
``x_i^T M x_j`` with ``M = W_Q^h (W_K^h)^T`` (d_model x d_model, rank <= head_dim), where
``W_Q^h`` is the d_model x head_dim slice of the query projection (torch stores Linear weights
as [out, in], so ``W_Q^h = query.weight[h*dh:(h+1)*dh, :].T``). Writing ``M = sum_k sigma_k
u_k v_k^T`` (its SVD), a head whose u_k and v_k point the same way (``alignment_k = u_k . v_k``
near 1) gives large logits to token pairs that share a direction: the spectral signature of a
matching head (arXiv 2507.14604).

Decisions the numbers depend on:

* **Unscaled.** sigma is the spectrum of ``W_Q^h (W_K^h)^T`` itself. BERT-style models divide
  the logit by ``sqrt(head_dim)``: multiply sigma by ``head_dim ** -0.5`` for the logit's scale.
  Alignments, and the ``head_alignment`` score ``sum(sigma * alignment) / sum(sigma)``, do not
  depend on the scale.
* **Biases ignored.** ``(W x_i + b_q) . (W' x_j + b_k)`` adds a term in x_j alone (a per-key
  bias) and terms constant over j, which the softmax cancels; neither is a query-key match.
* **Sign.** The SVD flips u_k and v_k together, so ``u_k . v_k`` does not depend on the solver's
  sign choice. Within a repeated singular value the split between the k's is arbitrary, but
  ``sum_k sigma_k alignment_k = trace(M)`` is exact, so the head score is always well defined.
* **Rank.** Every head keeps head_dim values (k = 0 largest); numerically zero ones carry
  arbitrary alignments but no weight in the head score.

What the matrix is depends on how the model adds positions (its family's ``Architecture.position``; ``note``,
written to the manifest):

* absolute positions (BERT, RoBERTa, ELECTRA, DistilBERT, XLM-R): the whole content interaction;
* an additive relative position bias (MPNet, T5): the bias depends on the distance only, not on the
  hidden states, so ``W_Q W_K^T`` is still the whole content interaction;
* disentangled attention (DeBERTa-v2/v3): the content-to-content term only; its content-to-position and
  position-to-content terms are left out;
* rotary embeddings (ModernBERT, Llama, Qwen2, Mistral, Gemma): the logit is ``x_i^T W_Q R_{j-i} W_K^T x_j``
  with a rotation by the distance; the spectrum is the position-free ``W_Q W_K^T`` (two tokens at the same
  position);
* grouped-query attention: several query heads share one key head; ``svd.kv_head`` says which.

Refused with :class:`SpectraError` (one line, with the reason): per-head query/key normalisation (Qwen3, Gemma-3),
where the logit is not a bilinear form of the hidden states.

The query and key weights, the head counts and the position kind come from the model's family
(:meth:`precompute.families.base.Family.qk_weights`, :attr:`~precompute.families.loading.LoadedModel.architecture`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from precompute.families.base import Architecture, QKWeights
from precompute.store.schema import SVD

NOTE_ABSOLUTE = "W_Q^h (W_K^h)^T, unscaled"
NOTE_BIAS = ("W_Q^h (W_K^h)^T, unscaled; the relative position bias is added per (head, distance), content-free, and "
             "left out like the projection biases")
NOTE_DISENTANGLED = ("W_Q^h (W_K^h)^T, unscaled: the content-to-content term only; the content-to-position and "
                     "position-to-content terms of disentangled attention are left out")
NOTE_ROTARY = ("position-free W_Q^h (W_K^h)^T, unscaled: rotary embeddings rotate queries and keys by position, so the "
               "logit is x_i^T W_Q R_(j-i) W_K^T x_j; this is the spectrum at distance 0")
NOTES = {"absolute": NOTE_ABSOLUTE, "bias": NOTE_BIAS, "disentangled": NOTE_DISENTANGLED, "rotary": NOTE_ROTARY}


class SpectraError(Exception):
    """The model's attention is not one the spectra can describe (message is one line, for the CLI)."""


def head_spectrum(wq: torch.Tensor, wk: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(sigma [dh], alignment [dh]) of ``wq @ wk.T`` for one head's factors wq, wk [d_model, dh]; float64."""
    sigma, alignment = _spectra(wq.unsqueeze(0), wk.unsqueeze(0))  # [1, dh] each
    return sigma[0].numpy(), alignment[0].numpy()


def spectra_table(lm) -> tuple[pa.Table, str]:
    """(the ``svd`` table of the loaded model ``lm``: one row per layer x head x k, sorted by (layer, head, k); the
    note saying which matrix it is the spectrum of)."""
    note = matrix_note(lm)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in SVD.column_names}
    for layer, (wq, wk, kv) in enumerate(layer_factors(lm)):
        sigma, alignment = _spectra(wq, wk[kv])  # [heads, dh] each
        heads, dh = sigma.shape
        columns["layer"].append(np.full(heads * dh, layer, dtype=np.int8))
        columns["head"].append(np.repeat(np.arange(heads, dtype=np.int8), dh))
        columns["kv_head"].append(np.repeat(kv.numpy().astype(np.int8), dh))
        columns["k"].append(np.tile(np.arange(dh, dtype=np.int16), heads))
        columns["sigma"].append(sigma.reshape(-1).numpy().astype(np.float32))
        columns["alignment"].append(alignment.reshape(-1).numpy().astype(np.float32))
    table = pa.Table.from_pydict({name: np.concatenate(parts) for name, parts in columns.items()}, schema=SVD.schema)
    return table, note


def _spectra(wq: torch.Tensor, wk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values and u_k . v_k of ``wq @ wk^T`` for a batch of heads, without forming it.

    With thin QRs ``wq = Qq Rq`` and ``wk = Qk Rk``, ``M = Qq (Rq Rk^T) Qk^T``: the SVD of the
    dh x dh core ``Rq Rk^T = U S V^T`` gives M's, with ``u_k = Qq U[:, k]`` and ``v_k = Qk V[:, k]``,
    so ``u_k . v_k = (U^T Qq^T Qk V)_kk``. Cost O(d dh^2) per head instead of O(d^3). Float64
    throughout so that tests against the full SVD hold to 1e-5.
    """
    qq, rq, qk, rk, u, sigma, vh = core_svd(wq, wk)
    cross = u.mT @ (qq.mT @ qk)  # [heads, dh, dh]: U^T Qq^T Qk
    alignment = (cross * vh).sum(-1)  # [heads, dh]: diagonal of cross @ V
    return sigma, alignment


def core_svd(wq: torch.Tensor, wk: torch.Tensor):
    """(Qq, Rq, Qk, Rk, U, sigma, V^T) of ``wq @ wk^T`` (batched over heads, float64): thin QRs of both factors and
    the SVD of the dh x dh core ``Rq Rk^T``, so that ``u_k = Qq U[:, k]`` and ``v_k = Qk V[:, k]``."""
    qq, rq = torch.linalg.qr(wq.double())  # [heads, d_model, dh], [heads, dh, dh]
    qk, rk = torch.linalg.qr(wk.double())  # [heads, d_model, dh], [heads, dh, dh]
    u, sigma, vh = torch.linalg.svd(rq @ rk.mT)  # [heads, dh, dh], [heads, dh], [heads, dh, dh]
    return qq, rq, qk, rk, u, sigma, vh


def _split_heads(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """[heads * dh, d_model] Linear weight -> [heads, d_model, dh], head h = rows h*dh:(h+1)*dh (as the forward's view)."""
    out, d_model = weight.shape
    w = weight.detach().to("cpu", torch.float32)
    return w.reshape(heads, out // heads, d_model).transpose(1, 2).contiguous()  # [heads, d_model, dh]


def split_layer(weights: QKWeights, arch: Architecture) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's (W_Q [heads, d_model, dh], W_K [kv_heads, d_model, dh], kv head of each query head [heads])."""
    return _split_heads(weights.query, arch.heads), _split_heads(weights.key, arch.kv_heads), weights.kv_head


def layer_factors(lm) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`split_layer` of every summarised layer of the loaded model ``lm``."""
    return [split_layer(weights, lm.architecture) for weights in lm.family.qk_weights(lm.model)]


def matrix_note(lm) -> str:
    """Which matrix the spectrum is of (module docstring); SpectraError for attention that is not bilinear."""
    arch = lm.architecture
    if arch.qk_norm:
        raise SpectraError(f"{type(lm.model).__name__}: queries and keys are normalised per head ({', '.join(arch.qk_norm)}) "
                           "before their product, so the attention logit is not a bilinear form of the hidden states; "
                           "no spectra")
    return NOTES[arch.position]
