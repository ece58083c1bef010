"""Half precision: the same pairs summarised in bfloat16 and float16 stay close to float32 (the kernels run the softmax
and every reduction in float32), no further than the architecture's own half-precision attention moves, and long
inputs give no NaN or inf.

Measured (max |mass difference| to float32): tiny BERT bf16 5e-5, fp16 3e-5; the reference MiniLM at 131 tokens
bf16 1.6e-2, fp16 6.7e-3. The issue asked for 2e-2 (bf16) and 2e-3 (fp16): the fp16 bound is not reachable on the
real model, because its own fp16 query and key projections already move layer 0's masses by 5e-3 (the kernel's
float32 softmax cannot undo rounded inputs); the tests hold the kernel to the order of the architecture's own error
(within twice the change of its eager half-precision attention) instead.
A tiny random decoder in bf16 moves its own (Hugging Face eager) attention weights by up to 8e-2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from precompute.kernels.eager import SummaryProbe
from precompute.families.loading import LoadedModel, load
from tests.tiny_families import build_family
from tests.tiny_models import DOCS, QUERIES, build

BERT_TOLERANCE = {torch.bfloat16: (1e-3, 1e-3), torch.float16: (2e-4, 5e-4)}  # tiny BERT: (masses, scores)
LONG = " ".join(DOCS * 30)  # several hundred tokens: truncated at max_length


def _run(lm, dtype, queries, docs, max_length):
    """(scores, stored summaries, the summaries of the architecture's own eager attention) in ``dtype``: the masses and
    matching signals tests.reference computes (the value-weighted shares are checked for finiteness in
    test_long_inputs_stay_finite_in_float16)."""
    from tests.precompute.families.test_families import _expected, own_outputs

    model = lm.model.to(dtype)
    try:
        half = LoadedModel(model, lm.tokenizer, lm.spec, "cpu", str(dtype).removeprefix("torch."), lm.family, lm.settings)
        batch = half.encode(queries, docs, max_length)
        with SummaryProbe(half) as probe:
            scores, summaries, _ = probe.run(batch, summarise=True)
        _, attentions, _ = own_outputs(half, batch)
        own = _expected(half, batch, attentions)
        return scores.float().numpy(), summaries.float().numpy()[..., :own.shape[-1]], own, summaries.float().numpy()
    finally:
        lm.model.float()


@pytest.fixture(scope="module", params=["bert", "llama-cls"])
def tiny(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "bert":
        build("bert", folder, layers=4)
    else:
        build_family(request.param, folder, layers=4)
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(folder)
        model.apply(model._init_weights)  # the family builder perturbs weights; this test wants a realistic scale
        model.save_pretrained(folder)
    return load(str(folder), device="cpu")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_half_precision_stays_close_to_float32(tiny, dtype):
    queries, docs = QUERIES + [QUERIES[2]], DOCS + [LONG]
    scores32, masses32, _, _ = _run(tiny, torch.float32, queries, docs, 128)
    scores, masses, own, _ = _run(tiny, dtype, queries, docs, 128)
    assert np.isfinite(scores).all() and np.isfinite(np.nan_to_num(masses, nan=0.0)).all()
    ours, theirs = np.nanmax(np.abs(masses - masses32)), np.nanmax(np.abs(own - masses32))
    # Rounding errors compound differently along the two computations (ours keeps the softmax in float32), so the
    # kernel is held to the same order as the architecture's own half-precision error, not below it.
    assert ours <= 2 * theirs + 1e-6, (ours, theirs)
    if tiny.family.name == "bert":
        mass_tol, score_tol = BERT_TOLERANCE[dtype]
        np.testing.assert_allclose(masses, masses32, atol=mass_tol, equal_nan=True)
        np.testing.assert_allclose(scores, scores32, atol=score_tol)


def test_long_inputs_stay_finite_in_float16(tiny):
    scores, _, _, summaries = _run(tiny, torch.float16, [QUERIES[0]] * 2, [LONG, LONG + " cat"], 128)
    assert np.isfinite(scores).all()
    defined = summaries[~np.isnan(summaries)]
    assert np.isfinite(defined).all() and defined.size > 0


@pytest.mark.shared
def test_reference_model_in_half_precision(minilm_dir, dl20_dir):
    """Real weights and DL20-like text at 512 tokens."""
    lm = load(str(minilm_dir), device="cpu")
    docs = [line.split("\t", 1)[1] for line in open(dl20_dir / "docs.tsv").read().splitlines()[:8]]
    queries = ["what is a cat"] * 4 + ["average salary of a dental hygienist in nebraska"] * 4
    scores32, masses32, _, _ = _run(lm, torch.float32, queries, docs, 512)
    for dtype in (torch.bfloat16, torch.float16):
        scores, masses, own, _ = _run(lm, dtype, queries, docs, 512)
        np.testing.assert_allclose(masses, masses32, atol=2e-2 if dtype == torch.bfloat16 else 1e-2)
        assert np.abs(masses - masses32).max() <= 2 * np.abs(own - masses32).max() + 1e-6
        np.testing.assert_allclose(scores, scores32, atol=0.05)
