"""Component ablations and QK-subspace interventions against hand-written computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from precompute.analyses import ablations
from precompute import conditions as C
from precompute.analyses.component_means import means_table, means_tensor, sums_chunk
from precompute.families.loading import load
from precompute.metrics import METRICS
from precompute.names import SEGMENTS
from precompute.pairs import Pair
from tests.precompute.analyses.test_ablations import LAYERS, sensitive_model
from tests.tiny_models import DOCS, QUERIES

PAIRS = [Pair(i, f"q{i}", f"d{i}", QUERIES[i], DOCS[i], 1, "relevant") for i in range(len(QUERIES))]


@pytest.fixture(scope="module", params=["bert", "roberta"])
def tiny(request, tmp_path_factory):
    return load(str(sensitive_model(request.param, tmp_path_factory.mktemp(request.param))), device="cpu")


def _base(model):
    return model.bert if model.config.model_type == "bert" else model.roberta


def reference_scores(lm, replace: dict[tuple[str, int], callable]) -> np.ndarray:
    """Float64 forward written from the modules' weights (post-LN BERT): ``replace[(component, layer)](out, segments)``
    returns the block output (attention's or MLP's output projection, before its residual add) to use instead."""
    model = lm.model.double()
    try:
        batch = lm.encode(QUERIES, DOCS, 64)
        seg = batch.segments.long()
        base = _base(model)
        with torch.no_grad():
            x = base.embeddings(input_ids=batch.inputs["input_ids"], token_type_ids=batch.inputs.get("token_type_ids"))
            b, s, hidden = x.shape
            heads = model.config.num_attention_heads
            dh = hidden // heads
            keep = (seg >= 0)[:, None, None, :]
            for i, layer in enumerate(base.encoder.layer):
                att = layer.attention.self
                split = lambda t: t.view(b, s, heads, dh).transpose(1, 2)  # noqa: E731
                q, k, v = split(att.query(x)), split(att.key(x)), split(att.value(x))
                logits = (q @ k.transpose(-1, -2) / dh**0.5).masked_fill(~keep, float("-inf"))
                ctx = (torch.softmax(logits, -1) @ v).transpose(1, 2).reshape(b, s, hidden)
                attn_out = layer.attention.output.dense(ctx)
                attn_out = replace.get(("attn", i), lambda o, _: o)(attn_out, seg)
                a = layer.attention.output.LayerNorm(x + attn_out)
                f = torch.nn.functional.gelu(layer.intermediate.dense(a))
                mlp_out = replace.get(("mlp", i), lambda o, _: o)(layer.output.dense(f), seg)
                x = layer.output.LayerNorm(a + mlp_out)
            logits = model.classifier(base.pooler(x)) if model.config.model_type == "bert" else model.classifier(x)
        return logits[:, 0].numpy()
    finally:
        lm.model.float()


def _at(segment: str | None, value):
    """A replacement: ``value(out)`` at every non-padding token, or only at ``segment``'s tokens."""
    def replace(out, seg):
        where = (seg >= 0) if segment is None else (seg == SEGMENTS.index(segment))
        return torch.where(where[..., None], value(out, seg), out)
    return replace


def _score(lm, spec: str, kernel: str, means=None) -> np.ndarray:
    condition = C.parse(spec)
    return ablations.score_conditions(lm, PAIRS, [condition], batch_size=8, max_length=64, kernel=kernel,
                                     means=means)[condition.condition_id]


@pytest.mark.parametrize("kernel", ("sdpa", "eager"))
@pytest.mark.parametrize("spec", ("mlp@1/zero", "attn@2/zero", "mlp@0-1:d/zero", "attn@1:cls/zero"))
def test_zero_component_ablation_equals_a_hand_written_forward(tiny, spec, kernel):
    c = C.parse(spec)
    zero = _at(c.segment, lambda out, seg: torch.zeros_like(out))
    want = reference_scores(tiny, {(c.component, layer): zero for layer in c.layer_indices(LAYERS)})
    np.testing.assert_allclose(_score(tiny, spec, kernel), want, atol=1e-5)
    assert np.abs(want - reference_scores(tiny, {})).max() > 1e-4  # the removal moves the scores


def test_component_means_equal_a_direct_average_and_mean_ablation_uses_them(tiny):
    table = means_table([sums_chunk(tiny, PAIRS[:2], batch_size=2, max_length=64),
                         sums_chunk(tiny, PAIRS[2:], batch_size=2, max_length=64)])
    means = means_tensor(table, LAYERS)  # [layers, 2, 5, hidden]
    # independent: the MLP output of layer 1 captured by a plain forward hook, averaged per segment in numpy
    captured = []
    handle = _base(tiny.model).encoder.layer[1].output.dense.register_forward_hook(lambda m, i, o: captured.append(o))
    batch = tiny.encode(QUERIES, DOCS, 64)
    with torch.no_grad():
        tiny.model(**batch.inputs)
    handle.remove()
    out, seg = captured[0].numpy(), batch.segments.numpy()
    for k, name in enumerate(SEGMENTS):
        np.testing.assert_allclose(means[1, 1, k].numpy(), out[seg == k].mean(0), atol=1e-5)
    mean_d = _at("d", lambda o, s: means[1, 1].double()[s.clamp(min=0)])
    want = reference_scores(tiny, {("mlp", 1): mean_d})
    np.testing.assert_allclose(_score(tiny, "mlp@1:d/mean", "sdpa", means=means), want, atol=1e-5)


def test_components_and_directions_do_not_share_a_forward_mode():
    conds = [C.parse("mlp@1/mean"), C.parse("attn@1/zero")]
    assert [len(g) for g in C.forward_groups(conds, 4)] == [1, 1]
    with pytest.raises(ValueError, match="share a mode"):
        C.forward_mode(conds)


# -- QK subspace --------------------------------------------------------------------------------------------------


def _subspace(lm, layer, head, k, factor):
    return C.parse(f"qk:{layer}.{head}:k{k}/{'remove' if factor == 0 else f'scale={factor:g}'}")


def test_scale_one_changes_nothing(tiny):
    none = C.parse("none")
    conds = [none, _subspace(tiny, 1, 2, 3, 1.0)]
    metrics: dict = {}
    got = ablations.score_conditions(tiny, PAIRS, conds, batch_size=8, max_length=64, head_metrics=metrics)
    np.testing.assert_array_equal(got[conds[1].condition_id], got["none"])
    removed = ablations.score_conditions(tiny, PAIRS, [_subspace(tiny, 1, 2, 3, 0.0)], batch_size=8, max_length=64)
    assert np.abs(next(iter(removed.values())) - got["none"]).max() > 1e-5


def test_removing_every_component_leaves_exactly_the_bias_terms(tiny):
    """The kernel's logits of the edited head equal a hand computation of its bias terms alone."""
    from precompute.kernels.state import BatchState, Intervention
    from precompute.analyses.subspace import head_factors, qk_edit

    att = _base(tiny.model).encoder.layer[1].attention.self
    heads, dh = 4, att.attention_head_size
    x = torch.randn(1, 6, heads * dh, dtype=torch.float64)
    with torch.no_grad():
        q = att.query.double()(x).view(1, 6, heads, dh).transpose(1, 2)
        k = att.key.double()(x).view(1, 6, heads, dh).transpose(1, 2)
    tiny.model.float()
    factors = head_factors(tiny, 1, 2)
    edit = qk_edit(factors, 1, 2, dh, 0.0, torch.tensor([True]), "cpu")
    state = BatchState(torch.zeros(1, 6), torch.zeros(1, 6), sites={}, intervention=Intervention(qk=(edit,)))
    edited, correction = state.edit_queries(1, q.float())
    logits = (edited.double() @ k.transpose(-1, -2))[0, 2] + correction.double()[0, 2, :, None]
    w_q, b_q = att.query.weight[2 * dh : 3 * dh].double(), att.query.bias[2 * dh : 3 * dh].double()
    w_k, b_k = att.key.weight[2 * dh : 3 * dh].double(), att.key.bias[2 * dh : 3 * dh].double()
    xs = x[0]
    bias_terms = (xs @ w_q.T @ b_k)[:, None] + (b_q @ w_k @ xs.T)[None, :] + b_q @ b_k
    np.testing.assert_allclose(logits.detach().numpy(), bias_terms.detach().numpy(), atol=1e-4)
    untouched = (edited.double() @ k.transpose(-1, -2))[0, [0, 1, 3]]
    np.testing.assert_allclose(untouched.detach().numpy(), (q @ k.transpose(-1, -2))[0, [0, 1, 3]].detach().numpy(),
                               atol=1e-5)


def test_subspace_metrics_of_the_edited_head_are_recorded(tiny):
    cond = _subspace(tiny, 1, 2, 8, 0.0)
    metrics: dict = {}
    ablations.score_conditions(tiny, PAIRS, [cond], batch_size=8, max_length=64, head_metrics=metrics)
    got = metrics[cond.condition_id]  # [pairs, len(METRICS)]: layer 1 head 2 under the intervention
    assert got.shape == (len(PAIRS), len(METRICS)) and np.isfinite(got).all()
    np.testing.assert_allclose(got[:, :25].reshape(-1, 5, 5).sum(-1), 1.0, atol=1e-5)


def test_aligned_subspace_removes_the_most_aligned_components_and_stores_their_alignments(tiny):
    """qk:L.H:aN picks the N components with the largest sigma_k * (u_k . v_k) (the svd table's alignment), removing
    them is removing exactly those components (the same edit built by hand from their indices), and the set's
    conditions carry the alignment of every removed component into their stored row."""
    from precompute.analyses.spectra import head_spectrum
    from precompute.analyses.subspace import aligned_components, head_factors, qk_edit
    from precompute.stages.ablations_stage import _alignments

    factors = head_factors(tiny, 1, 2)
    att = _base(tiny.model).encoder.layer[1].attention.self
    dh = att.attention_head_size
    wq, wk = (w.weight[2 * dh : 3 * dh].T.detach().double() for w in (att.query, att.key))
    sigma, alignment = head_spectrum(wq, wk)
    np.testing.assert_allclose(factors.alignment.numpy(), alignment, atol=1e-8)  # the svd table's alignment
    chosen = aligned_components(factors, 3)
    assert chosen == sorted(range(dh), key=lambda k: -sigma[k] * alignment[k])[:3]
    edit = qk_edit(factors, 1, 2, 3, 0.0, torch.tensor([True]), "cpu", chosen)
    by_hand = qk_edit(factors, 1, 2, dh, 0.0, torch.tensor([True]), "cpu")
    np.testing.assert_array_equal(edit.a.numpy(), by_hand.a[:, chosen].numpy())
    req = C.AblationRequest(sets=("aligned",), subspace_k="3", subspace_ops=("remove",))
    conds = req.conditions(2, 4, subspace_heads=[(1, 2)], head_dim=dh, alignments=_alignments(tiny))
    assert [c.kind for c in conds] == ["baseline", "subspace_aligned"]
    cond = conds[1]
    assert cond.condition_id == "qk:1.2:a3/remove" and cond.kind == "subspace_aligned"
    np.testing.assert_allclose(cond.row()["alignments"], [alignment[k] for k in chosen], atol=1e-6)
    assert C.Condition.from_row(cond.row()).alignments == cond.alignments
    none = C.parse("none")
    got = ablations.score_conditions(tiny, PAIRS, [none, cond, _subspace(tiny, 1, 2, 3, 0.0)], batch_size=8,
                                     max_length=64)
    assert np.abs(got[cond.condition_id] - got["none"]).max() > 1e-6
    if chosen != [0, 1, 2]:  # other components than the top 3 by sigma: another intervention
        assert np.abs(got[cond.condition_id] - got["qk:1.2:k3/remove"]).max() > 1e-7


def test_subspace_is_refused_for_rotary_and_disentangled_models(tmp_path):
    from precompute.analyses.subspace import SubspaceError, check_model
    from tests.tiny_families import build_family

    for kind in ("llama-cls", "deberta-v2"):
        lm = load(str(build_family(kind, tmp_path / kind)), device="cpu")
        with pytest.raises(SubspaceError, match="whole content term"):
            check_model(lm)
