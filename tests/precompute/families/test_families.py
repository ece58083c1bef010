"""Every model family, on a tiny random model built from its own config class: the kernels' masses and scores equal
the architecture's own attention probabilities and outputs; direction ablations equal the model's own forward with
the removal written by hand at its softmax; arguments a kernel does not implement are refused."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from precompute.families import FamilyError, family_for
from precompute.families.base import module_at
from precompute.kernels.state import KernelError, causal_impossible
from precompute.kernels.eager import SummaryProbe
from precompute.metrics import DIRECTION_INDEX, METRICS
from precompute.families.loading import ModelError, load
from precompute.names import DIRECTIONS, SEGMENT_INDEX
from tests import reference
from tests.tiny_families import ALL_KINDS, build_family
from tests.tiny_models import DOCS, QUERIES

MAX_LENGTH = 160


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    cache: dict[str, object] = {}

    def get(kind: str, padding_side: str = "right"):
        key = f"{kind}-{padding_side}"
        if key not in cache:
            cache[key] = build_family(kind, tmp_path_factory.mktemp(key), padding_side=padding_side)
        return cache[key]

    return get


def _model_inputs(lm, batch) -> dict:
    from precompute.families.templated import decoder_position_ids

    inputs = dict(batch.inputs)
    if lm.family.causal:
        inputs["position_ids"] = decoder_position_ids(inputs["attention_mask"])
    return inputs


@contextlib.contextmanager
def _eager(model):
    """The model's own eager attention (families that compute it inline have nothing else)."""
    previous = model.config._attn_implementation
    try:
        model.set_attn_implementation("eager")
    except (ValueError, AttributeError):
        pass
    try:
        yield model
    finally:
        with contextlib.suppress(ValueError, AttributeError):
            model.set_attn_implementation(previous)


def own_outputs(lm, batch):
    """(scores [b], self-attention weights per layer [b, h, s, s], cross-attention per decoder layer or None), from the
    architecture's own forward with output_attentions=True, scored as each family's paper defines it."""
    model, inputs = lm.model, _model_inputs(lm, batch)
    with _eager(model), torch.no_grad():
        if lm.family.name == "monot5":
            start = torch.full((len(inputs["input_ids"]), 1), model.config.decoder_start_token_id)
            out = model(**inputs, decoder_input_ids=start, output_attentions=True, use_cache=False)
            pos, neg = lm.settings.answer_ids
            scores = torch.log_softmax(out.logits[:, 0, [pos, neg]], -1)[:, 0]
            return scores, [a.float().numpy() for a in out.encoder_attentions], [a.float().numpy() for a in out.cross_attentions]
        out = model(**inputs, output_attentions=True, use_cache=False) if lm.family.causal else \
            model(**inputs, output_attentions=True)
        if lm.settings.answer_ids is not None:  # yes/no: the answer tokens at each row's last attended token
            last = inputs["attention_mask"].long().cumsum(-1).argmax(-1)
            pos, neg = lm.settings.answer_ids
            logits = out.logits[torch.arange(len(last)), last][:, [pos, neg]]
            scores = torch.log_softmax(logits.float(), -1)[:, 0]
        else:
            scores = out.logits.float()[:, 0]
        return scores, [a.float().numpy() for a in out.attentions], None


def _expected(lm, batch, attentions) -> np.ndarray:
    want = reference.summaries(attentions, batch.segments.numpy(), batch.inputs["input_ids"].numpy())
    if lm.family.causal:  # undefined: directions into later segments
        impossible = causal_impossible().flatten().numpy()[list(DIRECTION_INDEX[:want.shape[-1]])]
        want[..., impossible] = np.nan
    return want


def _summaries(lm, batch, **kw):
    with SummaryProbe(lm) as probe:
        scores, summaries, cross = probe.run(batch, summarise=True, **kw)
    return scores, summaries.numpy(), None if cross is None else cross.numpy()


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_masses_and_scores_equal_the_architectures_own(kind, folders):
    lm = load(str(folders(kind)), device="cpu")
    assert lm.family is family_for(lm.model.config)
    batch = lm.encode(QUERIES, DOCS, MAX_LENGTH)
    scores, got, cross = _summaries(lm, batch)
    want_scores, attentions, cross_attentions = own_outputs(lm, batch)
    want = _expected(lm, batch, attentions)
    np.testing.assert_allclose(got[..., :want.shape[-1]], want, atol=1e-4, equal_nan=True)
    np.testing.assert_allclose(scores.numpy(), want_scores.numpy(), atol=1e-5, rtol=0)  # the stored score is the model's own
    layers, heads = lm.shape
    assert got.shape == (len(QUERIES), layers, heads, len(METRICS))
    masses = got[..., :25].reshape(*got.shape[:3], 5, 5)
    np.testing.assert_allclose(np.nansum(masses, -1), 1.0, atol=1e-5)  # over the segments each source can see
    if cross_attentions is not None:
        onehot = np.eye(5)[np.clip(batch.segments.numpy(), 0, None)] * (batch.segments.numpy() >= 0)[..., None]
        want_cross = np.stack([np.einsum("bhk,bks->bhs", a[:, :, 0], onehot) for a in cross_attentions], 1)
        np.testing.assert_allclose(cross, want_cross, atol=1e-5)
    else:
        assert cross is None


# Within each family's layer: the value projection (a fused [q; k; v] one: its last third), for the hand computation.
VALUE_PATHS = {"bert": "attention.self.value", "distilbert": "attention.v_lin", "modernbert": "attn.Wqkv",
               "deberta-v2": "attention.self.value_proj", "mpnet": "attention.attn.v",
               "monot5": "layer.0.SelfAttention.v", "decoder-classifier": "self_attn.v_proj",
               "qwen-yes-no": "self_attn.v_proj", "yes-no": "self_attn.v_proj"}


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_value_weighted_shares_equal_a_hand_computation(kind, folders):
    """Every family's vw_* against an explicit loop over (i, j) of ||a_ij W_O^h v_j|| with the model's own value vectors
    and output projection (grouped-query decoders: query head h reads value head h // group). MonoT5: its encoder's
    self-attention; the decoder's cross-attention keeps its masses only (decoder_cross_attention)."""
    lm = load(str(folders(kind)), device="cpu")
    batch = lm.encode(QUERIES, DOCS, MAX_LENGTH)
    _, got, _ = _summaries(lm, batch)
    layers = lm.family.layers(lm.model)
    (_, attentions, _), values = reference.value_outputs(lambda: own_outputs(lm, batch), layers,
                                                         VALUE_PATHS[lm.family.name])
    if lm.family.qkv_path:
        values = [v[..., 2 * v.shape[-1] // 3:] for v in values]
    wo = [module_at(layer, lm.family.attention_output_path).weight.detach().float().numpy() for layer in layers]
    want = reference.value_weighted(attentions, values, wo, batch.segments.numpy())
    if lm.family.causal:
        want[..., causal_impossible().flatten().numpy()] = np.nan
    got_vw = got[..., [METRICS.index(f"vw_{d}") for d in DIRECTIONS]]
    np.testing.assert_allclose(got_vw, want, atol=1e-5, equal_nan=True)
    np.testing.assert_array_equal(np.isnan(got_vw), np.isnan(got[..., :25]))  # defined exactly where the masses are


def test_t5_masses_need_the_position_bias(folders, monkeypatch):
    """The check above would fail if the kernel dropped T5's relative position bias: without it the masses move."""
    from precompute.kernels import arguments

    lm = load(str(folders("monot5")), device="cpu")
    batch = lm.encode(QUERIES, DOCS, MAX_LENGTH)
    _, with_bias, _ = _summaries(lm, batch)
    real = arguments.parse_call

    def dropping(*args, **kwargs):
        call = real(*args, **kwargs)
        call.position_bias = None
        return call

    monkeypatch.setattr("precompute.kernels.eager.parse_call", dropping)
    _, without, _ = _summaries(lm, batch)
    assert np.nanmax(np.abs(with_bias - without)) > 1e-3


def test_causal_families_leave_impossible_directions_undefined(folders):
    lm = load(str(folders("llama-cls")), device="cpu")
    _, got, _ = _summaries(lm, lm.encode(QUERIES, DOCS, MAX_LENGTH))
    for i, name in enumerate(DIRECTIONS):
        src, dst = name.split("_")
        assert np.isnan(got[..., i]).all() == (SEGMENT_INDEX[dst] > SEGMENT_INDEX[src]), name
    for name in ("q2d_max", "q_d_exact", "q_d_other"):  # Query -> Document does not exist in a causal model
        assert np.isnan(got[..., 25 + ("q2d_max", "d2q_max", "q_d_exact", "q_d_other").index(name)]).all()


@pytest.mark.parametrize("kind", [k for k in ALL_KINDS if k.endswith(("-cls", "-yesno"))])
def test_left_and_right_padding_give_the_same_scores(kind, folders):
    right = load(str(folders(kind, "right")), device="cpu")
    left = load(str(folders(kind, "left")), device="cpu")
    batch_r, batch_l = right.encode(QUERIES, DOCS, MAX_LENGTH), left.encode(QUERIES, DOCS, MAX_LENGTH)
    assert batch_l.segments[1, 0] == -1 and batch_r.segments[1, -1] == -1  # padded on the side asked for
    s_r, m_r, _ = _summaries(right, batch_r)
    s_l, m_l, _ = _summaries(left, batch_l)
    np.testing.assert_allclose(s_l.numpy(), s_r.numpy(), atol=1e-4)
    np.testing.assert_allclose(m_l, m_r, atol=1e-4, equal_nan=True)


# -- ablations: the model's own forward with the removal written by hand at its softmax ------------------------------


def _token_removal(segments: np.ndarray, removed: set[tuple[int, int]]) -> np.ndarray:
    """[b, s, s] bool written from the definition: query token i loses key token j when (seg(i), seg(j)) is removed."""
    b, s = segments.shape
    out = np.zeros((b, s, s), bool)
    for r in range(b):
        for i in range(s):
            for j in range(s):
                out[r, i, j] = segments[r, i] >= 0 and segments[r, j] >= 0 and (segments[r, i], segments[r, j]) in removed
    return out


@contextlib.contextmanager
def _softmax_removal(removal: torch.Tensor, layers: int, mode: str):
    """Patch torch's softmax so that the first ``layers`` self-attention softmaxes of a forward (those over
    [b, h, s, s] weights) drop the removed cells: zero after it (zero mode) or -inf before it (mask mode)."""
    real = torch.nn.functional.softmax
    seen = {"n": 0}

    def softmax(x, dim=None, *args, **kwargs):
        hit = x.dim() == 4 and x.shape[-2:] == removal.shape[-2:] and seen["n"] < layers
        if hit:
            seen["n"] += 1
            if mode == "mask":
                x = x.masked_fill(removal[:, None], float("-inf"))
        out = real(x, dim, *args, **kwargs)
        if hit:
            out = out.masked_fill(removal[:, None], 0.0) if mode == "zero" else torch.nan_to_num(out, nan=0.0)
        return out

    torch.nn.functional.softmax = softmax
    try:
        yield seen
    finally:
        torch.nn.functional.softmax = real


ABLATION_KINDS = ("distilbert", "modernbert", "deberta-v2", "mpnet", "monot5", "qwen2-cls", "gemma2-cls", "qwen3-yesno")


@pytest.mark.parametrize("mode", ("zero", "mask"))
@pytest.mark.parametrize("kind", ABLATION_KINDS)
def test_direction_ablation_equals_the_models_own_forward_with_the_removal(kind, mode, folders):
    from precompute import conditions as C
    from precompute.analyses import ablations
    from precompute.pairs import Pair

    lm = load(str(folders(kind)), device="cpu")
    layers, heads = lm.shape
    name = "d_q" if lm.family.causal else "q_d"  # Query -> Document does not exist in a causal model
    condition = next(c for c in C.AblationRequest(sets=("directions",), modes=(mode,)).conditions(layers, heads)
                     if c.condition_id == f"{name}@all/{mode}")
    pairs = [Pair(i, f"q{i}", f"d{i}", QUERIES[i], DOCS[i], 1, "relevant") for i in range(len(QUERIES))]
    batch = lm.encode(QUERIES, DOCS, MAX_LENGTH)
    removal = torch.from_numpy(_token_removal(batch.segments.numpy(), {(SEGMENT_INDEX[name[0]], SEGMENT_INDEX[name[2:]])}))
    with _softmax_removal(removal, layers, mode) as seen:
        want, _, _ = own_outputs(lm, batch)
    assert seen["n"] == layers
    kernels = ("sdpa", "eager") if lm.family.sdpa_ablation(lm.model) else ("eager",)
    for kernel in kernels:
        got = ablations.score_conditions(lm, sorted(pairs, key=lambda p: p.pair_id), [condition], batch_size=8,
                                        max_length=MAX_LENGTH, kernel=kernel)[condition.condition_id]
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, err_msg=f"{kernel} kernel")
    unablated, _, _ = own_outputs(lm, batch)
    assert np.abs(unablated.numpy() - want.numpy()).max() > 1e-4  # the removal changes the scores: the test can fail


# -- refusals --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ("summary", "sdpa"))
def test_an_unknown_attention_argument_is_refused_in_one_line(kernel):
    from precompute.kernels import probe
    from precompute.kernels import sdpa
    from precompute.kernels import eager
    from precompute.kernels.state import BatchState, Site

    module = torch.nn.Identity()
    seg = torch.tensor([[0, 1, 2, 3, 4]])
    q = torch.randn(1, 2, 5, 4)
    fn = eager.atlas_attention if kernel == "summary" else sdpa.ablation_attention
    probe._ACTIVE = BatchState(seg, torch.arange(5)[None], sites={id(module): Site("self", 0)})
    try:
        fn(module, q, q, q, None, s_aux=None)  # None: nothing to apply, accepted
        with pytest.raises(KernelError, match="'s_aux'") as err:
            fn(module, q, q, q, None, s_aux=torch.ones(2))
        assert "\n" not in str(err.value)
    finally:
        probe._ACTIVE = None


def test_a_family_the_tool_does_not_know_is_refused_naming_the_supported_ones(tmp_path):
    import transformers as T

    from tests.tiny_families import tokenizer

    folder = tmp_path / "gpt2"
    T.GPT2ForSequenceClassification(T.GPT2Config(vocab_size=200, n_embd=16, n_layer=1, n_head=2, num_labels=1)).save_pretrained(folder)
    tokenizer("plain")[0].save_pretrained(folder)
    with pytest.raises(ModelError) as err:
        load(str(folder), device="cpu")
    message = str(err.value)
    assert "GPT2ForSequenceClassification" in message and "supported: bert" in message and "monot5" in message
    assert "\n" not in message


def test_a_multi_token_answer_is_refused(folders):
    with pytest.raises(ModelError, match="answer token 'very relevant' is 2 tokens"):
        load(str(folders("monot5")), device="cpu", answer_tokens=("very relevant", "false"))


def test_a_template_without_both_slots_is_refused(folders):
    with pytest.raises(ModelError, match=r"must contain \{query\} and \{document\}"):
        load(str(folders("qwen3-yesno")), device="cpu", template="Query: {query} Answer:")
    with pytest.raises((ModelError, FamilyError), match="pair template"):
        load(str(folders("distilbert")), device="cpu", template="{query} {document}")


def test_a_decoder_run_stores_null_for_impossible_directions(folders, tiny_dataset, tmp_path):
    """The whole job on a causal model: directions into a later segment are NULL (not 0) in head_attention and in the
    aggregate's sums; ablations that remove only such directions are refused before the run and named."""
    import duckdb

    from precompute.config import JobConfig
    from precompute.job import run
    from precompute.names import CAUSAL_IMPOSSIBLE
    from precompute.store.manifest import read_manifest

    out = run(JobConfig(dataset=str(tiny_dataset), model=str(folders("llama-cls")), out=tmp_path / "run",
                        cache=tmp_path / "cache", easy_negatives=2, max_queries=2, batch_size=4, chunk_size=8,
                        progress=False))
    ha, agg = out / "head_attention" / "*" / "data.parquet", out / "head_attention_agg.parquet"  # one file per layer
    for name in DIRECTIONS:
        nulls = duckdb.sql(f"SELECT count(*) - count({name}), count(*) FROM '{ha}'").fetchall()[0]
        sums = duckdb.sql(f"SELECT count({name}_sum) FROM '{agg}'").fetchall()[0][0]
        assert (nulls[0] == nulls[1] and sums == 0) == (name in CAUSAL_IMPOSSIBLE), name
    manifest = read_manifest(out)
    assert sorted(manifest.ablations.refused) == sorted(f"{d}@all/zero" for d in CAUSAL_IMPOSSIBLE)
    assert not set(manifest.ablations.conditions) & set(manifest.ablations.refused)
    assert manifest.model.causal and manifest.model.segment_labels["cls"] == "Prefix"


@pytest.mark.parametrize("kind", ["distilbert", "deberta-v2", "mpnet", "monot5", "llama-cls", "qwen3-yesno"])
def test_components_and_patching_work_for_every_family(kind, folders):
    """Component ablations move the scores, patching the whole residual stream entering the first layer or leaving the
    last gives the clean score, and attribution patching (with GradDrop) gives finite estimates that move."""
    from precompute.analyses import ablations
    from precompute.analyses import patching
    from precompute.analyses.attribution import attribute_batch
    from precompute.analyses.patching_inputs import experiment_inputs
    from precompute.conditions import parse
    from precompute.pairs import Pair

    lm = load(str(folders(kind)), device="cpu")
    layers, _ = lm.shape
    pairs = [Pair(i, f"q{i}", f"d{i}", QUERIES[i], DOCS[i], 1, "relevant") for i in range(len(QUERIES))]
    conditions = [parse(f"mlp@{layers - 1}/zero"), parse("attn@0:d/zero")]
    base = ablations.score_conditions(lm, pairs, [parse("none")], batch_size=8, max_length=MAX_LENGTH)["none"]
    scores = ablations.score_conditions(lm, pairs, conditions, batch_size=8, max_length=MAX_LENGTH)
    for c in conditions:
        assert np.isfinite(scores[c.condition_id]).all() and np.abs(scores[c.condition_id] - base).max() > 1e-5, c
    items, _ = experiment_inputs("tfc1", lm, pairs, MAX_LENGTH, per_query=10, seed=0)
    assert items, "no tfc1 input could be aligned"
    clean = lm.encode([i.query for i in items], [i.clean_doc for i in items], MAX_LENGTH)
    corrupted = lm.encode([i.query for i in items], [i.corrupted_doc for i in items], MAX_LENGTH)
    whole = [(0, patching.Variant("resid", "all")), (layers - 1, patching.Variant("resid_post", "all"))]
    with patching.Patcher(lm) as patcher:
        clean_scores, _, patched = patching.patch_batch(patcher, "tfc1", clean, corrupted, whole, rows_per_forward=256)
    for site in whole:  # the whole stream entering the first layer, or leaving the last: the clean score
        torch.testing.assert_close(patched[site], clean_scores, atol=1e-5, rtol=0)
    sites = patching.all_sites("tfc1", *lm.shape)
    with patching.Patcher(lm, eager=True) as patcher:  # attribution patching runs for every family
        _, corrupted_scores, estimated, dropped = attribute_batch(patcher, "tfc1", clean, corrupted, sites,
                                                                  graddrop=True)
    assert all(bool(torch.isfinite(estimated[s]).all() and torch.isfinite(dropped[s]).all()) for s in sites)
    assert max(float((estimated[s] - corrupted_scores).abs().max()) for s in sites) > 1e-4
