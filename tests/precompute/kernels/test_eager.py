"""The summaries computed inside the attention call equal a direct computation from eager attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from precompute.families.encoders import classifier_relevance
from precompute.kernels.eager import SummaryProbe
from precompute.metrics import METRICS
from precompute.names import DIRECTIONS
from precompute.families.loading import load
from precompute.families.segments import encode
from tests import reference
from tests.tiny_models import DOCS, QUERIES, build



@pytest.fixture(scope="module", params=["bert", "roberta"])
def tiny(request, tmp_path_factory):
    return load(str(build(request.param, tmp_path_factory.mktemp(request.param))))


def _probe(lm, queries, docs, max_length=64):
    batch = lm.encode(queries, docs, max_length)
    with SummaryProbe(lm) as probe:
        scores, summaries, _ = probe.run(batch, summarise=True)
    return batch, scores, summaries.numpy()


def test_summaries_equal_direct_computation(tiny):
    batch, scores, got = _probe(tiny, QUERIES, DOCS)
    ref_logits, attentions = reference.eager_attentions(tiny.model, batch.inputs)
    want = reference.summaries(attentions, batch.segments.numpy(), batch.inputs["input_ids"].numpy())
    np.testing.assert_allclose(got[..., :want.shape[-1]], want, atol=1e-5)  # the masses and matching signals
    torch.testing.assert_close(scores, ref_logits[:, 0], atol=1e-5, rtol=1e-5)


def test_value_weighted_shares_equal_a_hand_computation(tiny):
    """vw_* against an explicit loop over (i, j) of ||a_ij W_O^h v_j|| with the model's own value vectors and output
    projection (tests.reference.value_weighted)."""
    batch, _, got = _probe(tiny, QUERIES, DOCS)
    layers = tiny.model.base_model.encoder.layer
    (_, attentions), values = reference.value_outputs(lambda: reference.eager_attentions(tiny.model, batch.inputs),
                                                      layers, "attention.self.value")
    wo = [layer.attention.output.dense.weight.detach().numpy() for layer in layers]
    want = reference.value_weighted(attentions, values, wo, batch.segments.numpy())
    got_vw = got[..., [METRICS.index(f"vw_{d}") for d in DIRECTIONS]]
    np.testing.assert_allclose(got_vw, want, atol=1e-5)
    assert np.abs(got_vw - got[..., :25]).max() > 1e-3  # value weighting moved the shares: the test can fail

def test_masses_of_each_source_sum_to_one(tiny):
    _, _, got = _probe(tiny, QUERIES, DOCS)
    masses = got[..., :25].reshape(*got.shape[:3], 5, 5)
    np.testing.assert_allclose(masses.sum(-1), 1.0, atol=1e-5)


def test_exact_and_other_split_query_to_document_mass(tiny):
    _, _, got = _probe(tiny, QUERIES, DOCS)
    q_d = got[..., METRICS.index("q_d")]
    np.testing.assert_allclose(got[..., METRICS.index("q_d_exact")] + got[..., METRICS.index("q_d_other")], q_d, atol=1e-6)


def test_padding_does_not_change_a_pair(tiny):
    """A pair summarised alone equals the same pair padded inside a batch of longer ones."""
    _, alone_scores, alone = _probe(tiny, QUERIES[1:2], DOCS[1:2])
    _, batch_scores, batched = _probe(tiny, QUERIES, DOCS)
    np.testing.assert_allclose(batched[1], alone[0], atol=1e-5)
    torch.testing.assert_close(batch_scores[1], alone_scores[0], atol=1e-5, rtol=1e-5)


def test_probe_restores_attention_implementation(tiny):
    before = tiny.model.config._attn_implementation
    with SummaryProbe(tiny):
        assert tiny.model.config._attn_implementation == "matching_atlas"
    assert tiny.model.config._attn_implementation == before


def test_roberta_segments_have_two_separators_in_sep1(tmp_path):
    lm = load(str(build("roberta", tmp_path)))
    batch = encode(lm.tokenizer, ["what is a cat"], ["a cat purrs"], 64)
    tokens = lm.tokenizer.convert_ids_to_tokens(batch.inputs["input_ids"][0])
    assert tokens[:7] == ["<s>", "what", "is", "a", "cat", "</s>", "</s>"]
    assert batch.segments[0].tolist() == [0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 4]
    assert "token_type_ids" not in batch.inputs


def test_truncation_cuts_only_the_document(tiny):
    long_doc = " ".join(["cat"] * 100)
    batch = encode(tiny.tokenizer, ["what is a dog"], [long_doc], 32)
    assert batch.q_tokens == [4]
    assert batch.truncated == [True]
    assert batch.d_tokens_full == [100]
    assert batch.d_tokens[0] == 32 - 4 - (3 if tiny.config.model_type == "bert" else 4)


def test_two_label_model_scores_log_probability_of_relevant(tmp_path):
    lm = load(str(build("bert", tmp_path, num_labels=2)))
    batch = encode(lm.tokenizer, QUERIES, DOCS, 64)
    logits = lm.model(**batch.inputs).logits.detach()
    np.testing.assert_allclose(classifier_relevance(logits).numpy(), torch.log_softmax(logits, -1)[:, 1].numpy(), atol=1e-6)
    assert lm.score_kind == "log_softmax[1]"


@pytest.mark.shared
def test_reference_model_on_real_pairs(minilm_dir, dl20_dir):
    """Real weights, real DL20 text: every summary within 1e-4 of the direct computation (fp32)."""
    import csv

    queries = dict(csv.reader(open(dl20_dir / "queries.tsv"), delimiter="\t"))
    docs = {}
    with open(dl20_dir / "docs.tsv") as f:
        for i, line in enumerate(f):
            docid, text = line.rstrip("\n").split("\t", 1)
            docs[docid] = text
            if i > 2000:
                break
    rng = np.random.default_rng(0)
    qids = list(queries)[:6]
    dids = list(docs)
    pairs = [(queries[q], docs[dids[i]]) for q in qids for i in rng.choice(len(dids), 2, replace=False)]
    lm = load(str(minilm_dir), device="cpu")
    batch, scores, got = _probe(lm, [p[0] for p in pairs], [p[1] for p in pairs], max_length=512)
    ref_logits, attentions = reference.eager_attentions(lm.model, batch.inputs)
    want = reference.summaries(attentions, batch.segments.numpy(), batch.inputs["input_ids"].numpy())
    np.testing.assert_allclose(got[..., :want.shape[-1]], want, atol=1e-4)
    torch.testing.assert_close(scores, ref_logits[:, 0], atol=1e-4, rtol=1e-4)
    masses = got[..., :25].reshape(*got.shape[:3], 5, 5)
    np.testing.assert_allclose(masses.sum(-1), 1.0, atol=1e-4)


@pytest.mark.parametrize("kind", ["bert", "monot5", "llama-cls"])
def test_blocks_of_query_rows_give_the_same_numbers(kind, tmp_path, monkeypatch):
    """Long inputs are processed a few query rows at a time (bounded memory); blocks of 3 rows change nothing."""
    from precompute import conditions as C
    from precompute.kernels import eager
    from precompute.kernels.state import Intervention
    from tests.tiny_families import build_family

    folder = build(kind, tmp_path) if kind == "bert" else build_family(kind, tmp_path)
    lm = load(str(folder), device="cpu")
    batch = lm.encode(QUERIES, DOCS, 128)
    layers, heads = lm.shape
    condition = next(c for c in C.AblationRequest(sets=("directions",), modes=("mask",)).conditions(layers, heads)
                     if c.condition_id == "d_q@all/mask")
    dirs = C.forward_edits([condition], layers, heads).directions
    iv = Intervention("mask", dirs.repeat_interleave(len(QUERIES), 0))

    def run():
        with SummaryProbe(lm) as probe:
            plain = probe.run(batch, summarise=True)
            removed = probe.run(batch, summarise=True, intervention=iv)
        return plain, removed

    whole = run()
    assert eager.block_rows(4, heads, 40, 40) == 40  # small inputs: one block
    monkeypatch.setattr(eager, "block_rows", lambda batch, heads, rows, keys: 3)
    rows = run()
    for (s_whole, m_whole, _), (s_rows, m_rows, _) in zip(whole, rows):
        torch.testing.assert_close(s_rows, s_whole, atol=1e-5, rtol=0)
        np.testing.assert_allclose(m_rows.numpy(), m_whole.numpy(), atol=1e-5, equal_nan=True)
