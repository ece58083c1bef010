"""Attribution patching: equal to exact patching where the score is linear in the patched activation (tiny BERT, T5
and Llama models whose last layer and head are made linear), AtP*'s QK fix exact where only the layer's attention
weights depend on the patched stream, GradDrop's bookkeeping, and bfloat16 runs."""

from __future__ import annotations

import pytest
import torch

from precompute.analyses import attribution as A
from precompute.analyses import patching as P
from precompute.analyses import patching_inputs as I
from precompute.families.loading import LoadedModel, load
from precompute.pairs import Pair
from tests.precompute.analyses.test_ablations import sensitive_model
from tests.tiny_families import build_family
from tests.tiny_models import DOCS, QUERIES

PAIRS = [Pair(i, f"q{i}", f"d{i}", QUERIES[i], DOCS[i], 1, "relevant") for i in range(len(QUERIES))]
KINDS = ("bert", "monot5", "llama-cls")


def _load(kind: str, folder):
    if kind == "bert":
        return load(str(sensitive_model("bert", folder)), device="cpu")
    return load(str(build_family(kind, folder, layers=3)), device="cpu")


@pytest.fixture(scope="module", params=KINDS)
def tiny(request, tmp_path_factory):
    return _load(request.param, tmp_path_factory.mktemp(request.param))


class Ones(torch.nn.Module):
    """An activation that outputs ones: a gated MLP ``down(act(gate(x)) * up(x))`` becomes ``down(up(x))``."""

    def forward(self, x):
        return torch.ones_like(x)


def linear_tail(lm) -> None:
    """Make the score linear in the residual stream entering the last layer (and so in every activation after it):
    that layer's queries zero (its attention weights no longer depend on the stream), its norms and activations
    identities, and everything between it and the score linear."""
    identity = torch.nn.Identity
    model = lm.model
    last = lm.family.layers(model)[-1]
    with torch.no_grad():
        # scores of order 1, so float32 rounding stays far below the 1e-5 compared (T5's head, tied to its input
        # embeddings, gets a copy of its own: T5 without norms reaches scores in the hundreds)
        if lm.family.name == "monot5":
            model.lm_head = torch.nn.Linear(model.config.d_model, model.config.vocab_size, bias=False)
            model.lm_head.weight.copy_(model.shared.weight * 1e-3)
        else:
            (model.classifier if lm.family.name == "bert" else model.score).weight.mul_(0.1)
        if lm.family.name == "bert":
            last.attention.self.query.weight.zero_(), last.attention.self.query.bias.zero_()
            last.attention.output.LayerNorm, last.output.LayerNorm = identity(), identity()
            last.intermediate.intermediate_act_fn = identity()
            model.bert.pooler.activation = identity()
        elif lm.family.name == "monot5":
            last.layer[0].SelfAttention.q.weight.zero_()  # its logits are the (constant) position bias
            last.layer[0].layer_norm, last.layer[1].layer_norm = identity(), identity()
            last.layer[1].DenseReluDense.act = identity()
            model.encoder.final_layer_norm = identity()
            for block in model.decoder.block:  # the first decoder step reads the encoder linearly
                block.layer[1].EncDecAttention.q.weight.zero_()
                for sub in block.layer:
                    sub.layer_norm = identity()
                block.layer[2].DenseReluDense.act = identity()
            model.decoder.final_layer_norm = identity()
        else:
            last.self_attn.q_proj.weight.zero_()
            last.input_layernorm, last.post_attention_layernorm = identity(), identity()
            last.mlp.act_fn = Ones()
            model.model.norm = identity()


def _inputs(lm, experiment="tfc1"):
    items, _ = I.experiment_inputs(experiment, lm, PAIRS, 64, per_query=10, seed=0)
    clean = lm.encode([i.query for i in items], [i.clean_doc for i in items], 64)
    corrupted = lm.encode([i.query for i in items], [i.corrupted_doc for i in items], 64)
    return items, clean, corrupted


def _both(lm, sites, clean, corrupted, experiment="tfc1", **kw):
    with P.Patcher(lm) as patcher:
        _, _, exact = P.patch_batch(patcher, experiment, clean, corrupted, sites, rows_per_forward=4096)
    with P.Patcher(lm, eager=True) as patcher:
        _, _, estimated, dropped = A.attribute_batch(patcher, experiment, clean, corrupted, sites, **kw)
    return exact, estimated, dropped


def test_attribution_equals_exact_patching_where_the_score_is_linear(tiny):
    linear_tail(tiny)
    _, clean, corrupted = _inputs(tiny)
    layers, heads = tiny.shape
    sites = [s for s in P.all_sites("tfc1", layers, heads) if s[0] == layers - 1]
    exact, estimated, _ = _both(tiny, sites, clean, corrupted)
    moved = 0.0
    for site in sites:
        torch.testing.assert_close(estimated[site], exact[site], atol=1e-5, rtol=0, msg=str(site))
        moved = max(moved, float((exact[site] - exact[sites[0]]).abs().max()))
    assert moved > 1e-3  # the sites differ: the comparison is not between constants


def test_the_qk_fix_removes_the_error_of_a_linearised_saturated_softmax(tmp_path):
    """After the linear tail, the stream entering the last layer reaches the score linearly except through that
    layer's attention weights (given large queries: a saturated softmax) times its values. Recomputing the weights
    exactly (AtP*'s QK fix) leaves only the product of the weights' and the values' changes as error (measured: a
    fifth of the plain linear estimate's)."""
    lm = _load("bert", tmp_path / "bert")
    linear_tail(lm)
    attention = lm.family.layers(lm.model)[-1].attention.self
    with torch.no_grad():
        torch.manual_seed(3)
        attention.query.weight.copy_(torch.randn_like(attention.query.weight) * 3)
    _, clean, corrupted = _inputs(lm)
    layers, _ = lm.shape
    sites = [(layers - 1, P.Variant("resid", s)) for s in P.segments_of("tfc1")]
    exact, fixed, _ = _both(lm, sites, clean, corrupted)
    _, plain, _ = _both(lm, sites, clean, corrupted, qk_fix=False)
    plain_error = max(float((plain[s] - exact[s]).abs().max()) for s in sites)
    fixed_error = max(float((fixed[s] - exact[s]).abs().max()) for s in sites)
    assert plain_error > 1e-2 and fixed_error < 0.3 * plain_error, (fixed_error, plain_error)


def test_graddrop_scores(tmp_path):
    """The last layer's output reaches the score through no block: every dropped layer leaves its estimate, so its
    score is L / (L - 1) times |estimate|; a head's estimate is 0 when its own layer is dropped."""
    lm = _load("bert", tmp_path / "bert")
    _, clean, corrupted = _inputs(lm)
    layers, heads = lm.shape
    sites = P.all_sites("tfc1", layers, heads)
    with P.Patcher(lm, eager=True) as patcher:
        _, base, estimated, dropped = A.attribute_batch(patcher, "tfc1", clean, corrupted, sites, graddrop=True)
    final = (layers - 1, P.Variant("resid_post", "all"))
    torch.testing.assert_close(dropped[final], (estimated[final] - base).abs() * layers / (layers - 1))
    assert all(bool((dropped[s] >= 0).all()) for s in sites)
    assert max(float(dropped[s].max()) for s in sites if s[1].component == "head") > 0


@pytest.mark.parametrize("kind", KINDS)
def test_attribution_runs_in_bfloat16(kind, tmp_path):
    lm = _load(kind, tmp_path / kind)
    _, clean, corrupted = _inputs(lm)
    layers, heads = lm.shape
    sites = P.all_sites("tfc1", layers, heads)
    with P.Patcher(lm, eager=True) as patcher:
        _, base, single, _ = A.attribute_batch(patcher, "tfc1", clean, corrupted, sites)
    half = LoadedModel(lm.model.to(torch.bfloat16), lm.tokenizer, lm.spec, "cpu", "bfloat16", lm.family, lm.settings)
    with P.Patcher(half, eager=True) as patcher:
        c, k, estimated, dropped = A.attribute_batch(patcher, "tfc1", clean, corrupted, sites, graddrop=True)
    assert all(bool(torch.isfinite(estimated[s]).all() and torch.isfinite(dropped[s]).all()) for s in sites)
    # bfloat16 keeps 8 bits of mantissa, and a backward pass through it more error than a forward: the estimates
    # (changes from the corrupted score) follow float32's (measured correlation 0.98 to 0.998 on these models)
    half_changes = torch.cat([estimated[s].float() - k.float() for s in sites])
    single_changes = torch.cat([single[s] - base for s in sites])
    assert float(torch.corrcoef(torch.stack([half_changes, single_changes]))[0, 1]) > 0.95


def test_cls_attribution_patches_the_pooling_position(tmp_path):
    """cls inputs do not align: the estimate of a site lays the clean pooling position's activation onto the
    corrupted one's; the last layer's output there gives the clean score where the head is linear."""
    lm = _load("llama-cls", tmp_path / "llama")
    linear_tail(lm)
    pairs = [Pair(i, "q", f"d{i}", QUERIES[0], DOCS[i], g, t) for i, (g, t) in
             enumerate([(2, "relevant"), (0, "hard"), (1, "relevant"), (0, "hard")])]
    items = I.cls_pairs(pairs, per_query=4, seed=0)
    clean = lm.encode([i.query for i in items], [i.clean_doc for i in items], 64)
    corrupted = lm.encode([i.query for i in items], [i.corrupted_doc for i in items], 64)
    layers, heads = lm.shape
    sites = [s for s in P.all_sites("cls", layers, heads) if s[0] == layers - 1]
    exact, estimated, _ = _both(lm, sites, clean, corrupted, experiment="cls")
    for site in sites:
        torch.testing.assert_close(estimated[site], exact[site], atol=1e-5, rtol=0, msg=str(site))
