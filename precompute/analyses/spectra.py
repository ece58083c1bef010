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

What the matrix is depends on how the family adds positions (``note``, written to the manifest):

* absolute positions (BERT, RoBERTa, ELECTRA, DistilBERT, XLM-R): the whole content interaction;
* an additive relative position bias (MPNet, T5): the bias depends on the distance only, not on the
  hidden states, so ``W_Q W_K^T`` is still the whole content interaction;
* disentangled attention (DeBERTa-v2/v3): the content-to-content term only; its content-to-position and
  position-to-content terms are left out;
* rotary embeddings (ModernBERT, Llama, Qwen2, Mistral, Gemma): the logit is ``x_i^T W_Q R_{j-i} W_K^T x_j``
  with a rotation by the distance; the spectrum is the position-free ``W_Q W_K^T`` (two tokens at the same
  position);
* grouped-query attention: several query heads share one key head; ``svd.kv_head`` says which.

Refused with :class:`SpectraError` (one line, with the reason): BERT's ``relative_key`` positions (content
times position terms inside the product) and per-head query/key normalisation (Qwen3, Gemma-3), where the
logit is not a bilinear form of the hidden states.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from precompute.store.schema import SVD

# (query attribute, key attribute) of the self-attention modules of every family; ModernBERT fuses them (Wqkv).
_PROJECTIONS: tuple[tuple[str, str], ...] = (
    ("query", "key"), ("q_lin", "k_lin"), ("query_proj", "key_proj"), ("q_proj", "k_proj"), ("q", "k"),
)
_QK_NORMS = ("q_norm", "k_norm", "q_layernorm", "k_layernorm")
_ROTARY_CONFIG_KEYS = ("rope_parameters", "rope_theta", "rotary_dim", "rotary_emb_base", "rotary_pct", "global_rope_theta")

NOTE_ABSOLUTE = "W_Q^h (W_K^h)^T, unscaled"
NOTE_BIAS = ("W_Q^h (W_K^h)^T, unscaled; the relative position bias is added per (head, distance), content-free, and "
             "left out like the projection biases")
NOTE_DISENTANGLED = ("W_Q^h (W_K^h)^T, unscaled: the content-to-content term only; the content-to-position and "
                     "position-to-content terms of disentangled attention are left out")
NOTE_ROTARY = ("position-free W_Q^h (W_K^h)^T, unscaled: rotary embeddings rotate queries and keys by position, so the "
               "logit is x_i^T W_Q R_(j-i) W_K^T x_j; this is the spectrum at distance 0")


class SpectraError(Exception):
    """The model's attention is not one the spectra can describe (message is one line, for the CLI)."""


def qk_factors(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the query and key factors of every query head: (W_Q, W_K), each [heads, d_model, dh], float32 on
    CPU (under grouped-query attention a query head's W_K is its key head's). SpectraError when not bilinear."""
    matrix_note(model)
    return [(wq, wk[kv]) for wq, wk, kv in layer_factors(model)]


def head_spectrum(wq: torch.Tensor, wk: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(sigma [dh], alignment [dh]) of ``wq @ wk.T`` for one head's factors wq, wk [d_model, dh]; float64."""
    sigma, alignment = _spectra(wq.unsqueeze(0), wk.unsqueeze(0))  # [1, dh] each
    return sigma[0].numpy(), alignment[0].numpy()


def spectra_table(model: nn.Module) -> tuple[pa.Table, str]:
    """(the ``svd`` table of ``model``: one row per layer x head x k, sorted by (layer, head, k); the note saying
    which matrix it is the spectrum of)."""
    note = matrix_note(model)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in SVD.column_names}
    for layer, (wq, wk, kv) in enumerate(layer_factors(model)):
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


def _family(model: nn.Module):
    from precompute.families import family_for

    return family_for(model.config, architecture=type(model).__name__)


def projection_modules(module: nn.Module) -> tuple[nn.Linear, nn.Linear] | None:
    """The separate query and key Linear modules of one attention module, None when they are fused or absent."""
    for q_name, k_name in _PROJECTIONS:
        query, key = getattr(module, q_name, None), getattr(module, k_name, None)
        if isinstance(query, nn.Linear) and isinstance(key, nn.Linear):
            return query, key
    return None


def _projections(module: nn.Module, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The query and key Linear weights [out, in] of one attention module."""
    found = projection_modules(module)
    if found is not None:
        return found[0].weight, found[1].weight
    fused = getattr(module, "Wqkv", None)
    if isinstance(fused, nn.Linear) and fused.out_features == 3 * hidden:
        return fused.weight[:hidden], fused.weight[hidden : 2 * hidden]
    raise SpectraError(f"{type(module).__name__} has no query/key projections the spectra know "
                       f"({', '.join('/'.join(p) for p in _PROJECTIONS)}, Wqkv)")


def layer_factors(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per layer: (W_Q [heads, d_model, dh], W_K [kv_heads, d_model, dh], kv head of each query head [heads])."""
    family = _family(model)
    _, heads = family.shape(model)
    out = []
    for module, site in family.attention_sites(model):
        if site.role != "self":
            continue
        wq, wk = _projections(module, _hidden(model))
        if wq.shape[0] % heads:
            raise SpectraError(f"query projection {tuple(wq.shape)} does not split into {heads} heads")
        dh = wq.shape[0] // heads
        kv_heads = wk.shape[0] // dh
        if kv_heads < 1 or wk.shape[0] % dh or heads % kv_heads:
            raise SpectraError(f"key projection {tuple(wk.shape)} does not split into key heads of size {dh} shared "
                               f"evenly by {heads} query heads")
        out.append((_split_heads(wq, heads), _split_heads(wk, kv_heads), torch.arange(heads) // (heads // kv_heads)))
    return out


def _hidden(model: nn.Module) -> int:
    config = model.config
    return int(getattr(config, "hidden_size", None) or getattr(config, "d_model", None) or getattr(config, "dim"))


def matrix_note(model: nn.Module) -> str:
    """Which matrix the spectrum is of (module docstring); SpectraError for attention that is not bilinear."""
    config, name = model.config, _model_name(model)
    position = getattr(config, "position_embedding_type", None) or "absolute"
    if position not in ("absolute", "rotary"):
        raise SpectraError(
            f"{name}: position_embedding_type={position!r} multiplies content by relative positions inside the "
            "attention logits; its spectra are not defined (position_embedding_type='absolute' is)"
        )
    norms = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in _QK_NORMS})
    if norms:
        raise SpectraError(f"{name}: queries and keys are normalised per head ({', '.join(norms)}) before their "
                           "product, so the attention logit is not a bilinear form of the hidden states; no spectra")
    if getattr(config, "relative_attention", False):
        return NOTE_DISENTANGLED
    rotary = [key for key in _ROTARY_CONFIG_KEYS if getattr(config, key, None) is not None]
    if rotary or any("rotary" in module_name.lower() for module_name, _ in model.named_modules()):
        return NOTE_ROTARY
    if getattr(config, "relative_attention_num_buckets", None):  # T5, MPNet
        return NOTE_BIAS
    return NOTE_ABSOLUTE


def _model_name(model: nn.Module) -> str:
    return getattr(model.config, "model_type", None) or type(model).__name__
