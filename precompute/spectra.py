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

Only plain bilinear attention is supported: relative-position terms (DeBERTa's disentangled
attention, BERT's ``relative_key``) and rotary embeddings make the logit depend on positions
through more than the input vectors, and such models raise :class:`SpectraError`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from precompute.store.schema import SVD

# (query attribute, key attribute, heads attribute) of the self-attention modules we read:
# BERT, RoBERTa, ELECTRA, XLM-R, MiniLM (``attention.self``) and DistilBERT (``attention``).
_PROJECTIONS: tuple[tuple[str, str, str], ...] = (
    ("query", "key", "num_attention_heads"),
    ("q_lin", "k_lin", "n_heads"),
)
_ROTARY_CONFIG_KEYS = ("rope_parameters", "rope_theta", "rotary_dim", "rotary_emb_base", "rotary_pct")


class SpectraError(Exception):
    """The model's attention is not one the spectra can describe (message is one line, for the CLI)."""


def check_supported(model: nn.Module) -> None:
    """Raise SpectraError (one line, with the reason) unless the spectra of ``model`` can be computed."""
    _check_bilinear(model)
    _attention_modules(model)


def qk_factors(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the query and key factors of every head: (W_Q, W_K), each [heads, d_model, dh], float32 on CPU.

    Raises SpectraError for attention that is not a plain bilinear form or not found.
    """
    _check_bilinear(model)
    factors = []
    for query, key, heads in _attention_modules(model):
        factors.append((_split_heads(query.weight, heads), _split_heads(key.weight, heads)))
    return factors


def head_spectrum(wq: torch.Tensor, wk: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(sigma [dh], alignment [dh]) of ``wq @ wk.T`` for one head's factors wq, wk [d_model, dh]; float64."""
    sigma, alignment = _spectra(wq.unsqueeze(0), wk.unsqueeze(0))  # [1, dh] each
    return sigma[0].numpy(), alignment[0].numpy()


def spectra_table(model: nn.Module) -> pa.Table:
    """The ``svd`` table of ``model``: one row per layer x head x k, sorted by (layer, head, k)."""
    columns: dict[str, list[np.ndarray]] = {name: [] for name in SVD.column_names}
    for layer, (wq, wk) in enumerate(qk_factors(model)):
        sigma, alignment = _spectra(wq, wk)  # [heads, dh] each
        heads, dh = sigma.shape
        columns["layer"].append(np.full(heads * dh, layer, dtype=np.int8))
        columns["head"].append(np.repeat(np.arange(heads, dtype=np.int8), dh))
        columns["k"].append(np.tile(np.arange(dh, dtype=np.int16), heads))
        columns["sigma"].append(sigma.reshape(-1).numpy().astype(np.float32))
        columns["alignment"].append(alignment.reshape(-1).numpy().astype(np.float32))
    return pa.Table.from_pydict({name: np.concatenate(parts) for name, parts in columns.items()}, schema=SVD.schema)


def _spectra(wq: torch.Tensor, wk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values and u_k . v_k of ``wq @ wk^T`` for a batch of heads, without forming it.

    With thin QRs ``wq = Qq Rq`` and ``wk = Qk Rk``, ``M = Qq (Rq Rk^T) Qk^T``: the SVD of the
    dh x dh core ``Rq Rk^T = U S V^T`` gives M's, with ``u_k = Qq U[:, k]`` and ``v_k = Qk V[:, k]``,
    so ``u_k . v_k = (U^T Qq^T Qk V)_kk``. Cost O(d dh^2) per head instead of O(d^3). Float64
    throughout so that tests against the full SVD hold to 1e-5.
    """
    qq, rq = torch.linalg.qr(wq.double())  # [heads, d_model, dh], [heads, dh, dh]
    qk, rk = torch.linalg.qr(wk.double())  # [heads, d_model, dh], [heads, dh, dh]
    u, sigma, vh = torch.linalg.svd(rq @ rk.mT)  # [heads, dh, dh], [heads, dh], [heads, dh, dh]
    cross = u.mT @ (qq.mT @ qk)  # [heads, dh, dh]: U^T Qq^T Qk
    alignment = (cross * vh).sum(-1)  # [heads, dh]: diagonal of cross @ V
    return sigma, alignment


def _split_heads(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """[heads * dh, d_model] Linear weight -> [heads, d_model, dh], head h = rows h*dh:(h+1)*dh (as the forward's view)."""
    out, d_model = weight.shape
    w = weight.detach().to("cpu", torch.float32)
    return w.reshape(heads, out // heads, d_model).transpose(1, 2).contiguous()  # [heads, d_model, dh]


def _attention_modules(model: nn.Module) -> list[tuple[nn.Linear, nn.Linear, int]]:
    """(query Linear, key Linear, number of heads) of each encoder layer, in layer order."""
    found = []
    for module in getattr(model, "base_model", model).modules():
        for q_name, k_name, heads_name in _PROJECTIONS:
            query, key = getattr(module, q_name, None), getattr(module, k_name, None)
            if isinstance(query, nn.Linear) and isinstance(key, nn.Linear) and hasattr(module, heads_name):
                found.append((query, key, int(getattr(module, heads_name))))
    name = _model_name(model)
    if not found:
        raise SpectraError(
            f"{name}: no self-attention module with query/key (BERT, RoBERTa, ELECTRA) or q_lin/k_lin (DistilBERT) "
            "projections found; spectra support only these architectures"
        )
    layers = getattr(model.config, "num_hidden_layers", len(found))
    if len(found) != layers:
        raise SpectraError(
            f"{name}: found {len(found)} attention modules for {layers} layers (shared or cross-attention layers "
            "are not supported by spectra)"
        )
    for query, key, heads in found:
        if query.weight.shape != key.weight.shape or query.out_features % heads:
            raise SpectraError(
                f"{name}: query {tuple(query.weight.shape)} and key {tuple(key.weight.shape)} projections do not "
                f"split into {heads} equal heads"
            )
    return found


def _check_bilinear(model: nn.Module) -> None:
    """Refuse models whose attention logit is not ``x_i^T W_Q W_K^T x_j`` (plus biases)."""
    config, name = model.config, _model_name(model)
    position = getattr(config, "position_embedding_type", None) or "absolute"
    if position != "absolute":
        raise SpectraError(
            f"{name}: position_embedding_type={position!r} adds relative-position terms to the attention logits; "
            "spectra describe only plain bilinear attention (position_embedding_type='absolute')"
        )
    if getattr(config, "relative_attention", False):
        raise SpectraError(
            f"{name}: disentangled relative-position attention (DeBERTa) is not a plain bilinear form of the "
            "hidden states; spectra are not defined for it"
        )
    rotary = [key for key in _ROTARY_CONFIG_KEYS if getattr(config, key, None) is not None]
    if rotary or any("rotary" in module_name.lower() for module_name, _ in model.named_modules()):
        raise SpectraError(
            f"{name}: rotary position embeddings ({', '.join(rotary) or 'rotary module'}) rotate queries and keys "
            "by position; spectra describe only plain bilinear attention"
        )


def _model_name(model: nn.Module) -> str:
    return getattr(model.config, "model_type", None) or type(model).__name__
