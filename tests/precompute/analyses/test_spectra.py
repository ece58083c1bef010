"""QK spectra: the factored SVD against known matrices and the full SVD, tiny models, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from precompute.analyses.spectra import (NOTE_ABSOLUTE, NOTE_BIAS, NOTE_DISENTANGLED, NOTE_ROTARY, NOTES, SpectraError,
                                         head_spectrum, layer_factors, spectra_table)
from precompute.families.base import POSITIONS
from precompute.families.loading import LoadedModel
from precompute.store.schema import SVD

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99)


def _orthonormal(d: int, r: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))
    return q  # [d, r]


def _full_spectrum(m: torch.Tensor, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: the full d x d SVD, first r values and u_k . v_k."""
    u, s, vh = torch.linalg.svd(m.double())
    return s[:r].numpy(), (u[:, :r] * vh[:r].T).sum(0).numpy()


def test_symmetric_psd_aligns_to_one():
    w = torch.randn(24, 6, dtype=torch.float64)
    sigma, alignment = head_spectrum(w, w)
    np.testing.assert_allclose(alignment, 1.0, atol=1e-8)
    np.testing.assert_allclose(sigma, torch.linalg.svdvals(w) ** 2, rtol=1e-8)


def test_negated_key_aligns_to_minus_one():
    w = torch.randn(24, 6, dtype=torch.float64)
    _, alignment = head_spectrum(w, -w)
    np.testing.assert_allclose(alignment, -1.0, atol=1e-8)


def test_constructed_rotation_has_known_sigma_and_alignment():
    # u_k = a_k, v_k = cos(t_k) a_k + sin(t_k) b_k with a, b orthonormal: alignment_k = cos(t_k).
    d, r = 20, 4
    basis = _orthonormal(d, 2 * r, seed=1)
    a, b = basis[:, :r], basis[:, r:]  # [d, r] each, mutually orthogonal
    sigma_true = torch.tensor([5.0, 3.0, 2.0, 0.5], dtype=torch.float64)
    angles = torch.tensor([0.0, math.pi / 3, math.pi / 2, math.pi], dtype=torch.float64)
    wq = a * sigma_true  # [d, r]
    wk = a * torch.cos(angles) + b * torch.sin(angles)  # [d, r]
    sigma, alignment = head_spectrum(wq, wk)
    np.testing.assert_allclose(sigma, sigma_true.numpy(), atol=1e-10)
    np.testing.assert_allclose(alignment, [1.0, 0.5, 0.0, -1.0], atol=1e-10)


def test_factored_svd_equals_full_svd():
    g = torch.Generator().manual_seed(0)
    wq, wk = torch.randn(2, 64, 8, generator=g)  # [d_model, dh] each, float32 as in models
    sigma, alignment = head_spectrum(wq, wk)
    full_sigma, full_alignment = _full_spectrum(wq.double() @ wk.double().T, 8)
    np.testing.assert_allclose(sigma, full_sigma, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(alignment, full_alignment, atol=1e-5)
    assert np.all(np.diff(sigma) <= 0)


def test_weighted_alignment_is_trace_even_with_repeated_sigma():
    # Repeated singular values leave u_k, v_k ambiguous, but sum(sigma * alignment) = trace(M) always.
    a, b = _orthonormal(16, 4, seed=2), _orthonormal(16, 4, seed=3)
    sigma, alignment = head_spectrum(a, b)
    np.testing.assert_allclose(sigma, 1.0, atol=1e-10)
    assert float((sigma * alignment).sum()) == pytest.approx(float(torch.trace(a @ b.T)), abs=1e-10)


def _lm(model) -> LoadedModel:
    """A model built in code, loaded as the job loads one (its family from its config; no tokenizer needed)."""
    return LoadedModel(model, None, "tiny", "cpu", "float32")


def test_every_position_kind_has_a_note():
    assert set(NOTES) == set(POSITIONS)


def _bert(**overrides):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(**{**TINY, **overrides})).eval()


def _roberta():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(1)
    return RobertaForSequenceClassification(RobertaConfig(**TINY)).eval()


def _electra():
    from transformers import ElectraConfig, ElectraForSequenceClassification

    torch.manual_seed(3)
    return ElectraForSequenceClassification(ElectraConfig(**TINY, embedding_size=16)).eval()


def _distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(2)
    config = DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=37, vocab_size=99)
    return DistilBertForSequenceClassification(config).eval()


def _self_attention_weights(model, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The query and key Linear weights [out, in] of one layer, reached by each family's module path."""
    if model.config.model_type == "distilbert":
        attention = model.distilbert.transformer.layer[layer].attention
        return attention.q_lin.weight, attention.k_lin.weight
    attention = model.base_model.encoder.layer[layer].attention.self
    return attention.query.weight, attention.key.weight


@pytest.mark.parametrize("build", [_bert, _roberta, _electra, _distilbert], ids=["bert", "roberta", "electra", "distilbert"])
def test_tiny_model_table_matches_direct_computation(build):
    model = build()
    table, note = spectra_table(_lm(model))
    assert note == NOTE_ABSOLUTE
    layers, heads, dh = 2, 4, 8
    assert table.schema.equals(SVD.schema)
    assert table.num_rows == layers * heads * dh
    rows = table.to_pydict()
    sigma = np.array(rows["sigma"]).reshape(layers, heads, dh)
    alignment = np.array(rows["alignment"]).reshape(layers, heads, dh)
    assert rows["k"][:dh] == list(range(dh))
    for layer in range(layers):
        wq, wk = _self_attention_weights(model, layer)  # [heads * dh, d_model] each
        for head in range(heads):
            rows_h = slice(head * dh, (head + 1) * dh)
            m = wq[rows_h].T.detach() @ wk[rows_h].detach()  # [d_model, d_model]: logit = x_i^T m x_j
            full_sigma, full_alignment = _full_spectrum(m, dh)
            np.testing.assert_allclose(sigma[layer, head], full_sigma, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(alignment[layer, head], full_alignment, atol=1e-4)


def test_layer_factors_shapes_and_orientation():
    model = _bert()
    factors = layer_factors(_lm(model))
    assert len(factors) == 2
    wq, wk, kv = factors[1]
    assert wq.shape == wk.shape == (4, 32, 8) and wq.dtype == torch.float32 and kv.tolist() == [0, 1, 2, 3]
    query = model.bert.encoder.layer[1].attention.self.query.weight
    torch.testing.assert_close(wq[2], query[16:24].T.detach())


def test_logits_are_the_bilinear_form():
    # The orientation check that matters: x_i^T W_Q^h W_K^h^T x_j is q_i . k_j of the module (biases aside).
    model = _bert()
    attention = model.bert.encoder.layer[0].attention.self
    wq, wk, _ = layer_factors(_lm(model))[0]  # [heads, d_model, dh]
    x = torch.randn(5, 32)
    with torch.no_grad():
        q = (attention.query(x) - attention.query.bias).view(5, 4, 8)  # [tokens, heads, dh]
        k = (attention.key(x) - attention.key.bias).view(5, 4, 8)
    logits = torch.einsum("ihe,jhe->hij", q, k)  # [heads, tokens, tokens]
    torch.testing.assert_close(logits, x @ wq @ wk.mT @ x.T, rtol=1e-4, atol=1e-5)


def test_deberta_gives_its_content_to_content_term_with_a_note():
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    config = DebertaV2Config(**TINY, relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=16)
    model = DebertaV2ForSequenceClassification(config).eval()
    table, note = spectra_table(_lm(model))
    assert note == NOTE_DISENTANGLED
    attention = model.deberta.encoder.layer[1].attention.self
    m = attention.query_proj.weight[8:16].T.detach() @ attention.key_proj.weight[8:16].detach()  # head 1
    sigma = np.array(table.column("sigma").to_pylist()).reshape(2, 4, 8)
    np.testing.assert_allclose(sigma[1, 1], _full_spectrum(m, 8)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.shared
def test_minilm_reference_model(minilm_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir)
    table, _ = spectra_table(_lm(model))
    assert table.num_rows == 6 * 12 * 32
    sigma = np.array(table.column("sigma").to_pylist()).reshape(6 * 12, 32)
    assert np.all(np.diff(sigma, axis=1) <= 0)
    assert np.all(sigma[:, 0] > 0)
    alignment = np.array(table.column("alignment").to_pylist())
    assert np.all(np.abs(alignment) <= 1 + 1e-5)


# Each family's query and key weights [out, in], read from the modules by hand (not through the family).
_QK = {
    "mpnet": lambda m, i: (m.mpnet.encoder.layer[i].attention.attn.q.weight, m.mpnet.encoder.layer[i].attention.attn.k.weight),
    "monot5": lambda m, i: (m.encoder.block[i].layer[0].SelfAttention.q.weight, m.encoder.block[i].layer[0].SelfAttention.k.weight),
    "modernbert": lambda m, i: m.model.layers[i].attn.Wqkv.weight.view(3, -1, m.config.hidden_size)[:2],
    "llama-cls": lambda m, i: (m.model.layers[i].self_attn.q_proj.weight, m.model.layers[i].self_attn.k_proj.weight),
    "qwen2-yesno": lambda m, i: (m.model.layers[i].self_attn.q_proj.weight, m.model.layers[i].self_attn.k_proj.weight),
}


@pytest.mark.parametrize("kind", list(_QK))
def test_every_family_with_a_bilinear_content_term_has_spectra(kind, tmp_path):
    """Each head's spectrum equals the full SVD of its own W_Q^h W_K^T (grouped-query heads: their key head's)."""
    from precompute.families.loading import load
    from tests.tiny_families import build_family

    lm = load(str(build_family(kind, tmp_path)), device="cpu")
    table, note = spectra_table(lm)
    assert note == (NOTE_BIAS if kind in ("mpnet", "monot5") else NOTE_ROTARY)
    rows = table.to_pydict()
    layers, heads = lm.shape
    dh = len(rows["k"]) // (layers * heads)
    sigma = np.array(rows["sigma"]).reshape(layers, heads, dh)
    kv_head = np.array(rows["kv_head"]).reshape(layers, heads, dh)[..., 0]
    for layer in range(layers):
        wq, wk = _QK[kind](lm.model, layer)
        groups = heads // (wk.shape[0] // dh)
        for head in range(heads):
            assert kv_head[layer, head] == head // groups
            key = slice(head // groups * dh, (head // groups + 1) * dh)
            m = wq[head * dh : (head + 1) * dh].T.detach() @ wk[key].detach()
            np.testing.assert_allclose(sigma[layer, head], _full_spectrum(m, dh)[0], rtol=1e-5, atol=1e-6)
    if kind in ("llama-cls", "qwen2-yesno"):
        assert len(set(kv_head[0])) == heads // 2  # grouped-query: two query heads per key head


def test_query_key_normalisation_is_refused(tmp_path):
    from precompute.families.loading import load
    from tests.tiny_families import build_family

    lm = load(str(build_family("qwen3-yesno", tmp_path)), device="cpu")
    with pytest.raises(SpectraError, match="normalised per head .q_norm, k_norm.") as err:
        spectra_table(lm)
    assert "\n" not in str(err.value)
