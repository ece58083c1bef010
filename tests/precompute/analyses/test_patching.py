"""Activation patching: self-patching changes nothing, the last residual stream gives the clean score, the stream
entering the first layer at every token gives it too, and the batched sweep (resumed layers, sites as rows) equals a
plain loop of one full forward per patched activation, written here with ordinary hooks on the Hugging Face
modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from precompute.analyses import patching as P
from precompute.analyses import patching_inputs as I
from precompute.families.loading import load
from precompute.names import SEGMENTS
from precompute.pairs import Pair
from tests.precompute.analyses.test_ablations import sensitive_model
from tests.tiny_models import DOCS, QUERIES

PAIRS = [Pair(i, f"q{i}", f"d{i}", QUERIES[i], DOCS[i], 1, "relevant") for i in range(len(QUERIES))]


@pytest.fixture(scope="module", params=["bert", "roberta"])
def tiny(request, tmp_path_factory):
    return load(str(sensitive_model(request.param, tmp_path_factory.mktemp(request.param))), device="cpu")


def _batches(lm, items):
    clean = lm.encode([i.query for i in items], [i.clean_doc for i in items], 64)
    corrupted = lm.encode([i.query for i in items], [i.corrupted_doc for i in items], 64)
    return clean, corrupted


def _sweep(lm, experiment, clean, corrupted, sites=None, **kw):
    layers, heads = lm.shape
    sites = sites or P.all_sites(experiment, layers, heads)
    with P.Patcher(lm) as patcher:
        return P.patch_batch(patcher, experiment, clean, corrupted, sites, rows_per_forward=kw.pop("rows", 64), **kw)


def _tfc1(lm):
    return I.experiment_inputs("tfc1", lm, PAIRS, 64, per_query=10, seed=0)[0]


def test_patching_a_run_with_its_own_activations_changes_nothing(tiny):
    _, corrupted = _batches(tiny, _tfc1(tiny))
    _, base, patched = _sweep(tiny, "tfc1", corrupted, corrupted)
    for scores in patched.values():
        torch.testing.assert_close(scores, base, atol=1e-6, rtol=0)


@pytest.mark.parametrize("experiment", ["tfc1", "cls"])
def test_the_last_residual_stream_gives_exactly_the_clean_score(tiny, experiment):
    if experiment == "tfc1":
        items = _tfc1(tiny)
    else:
        pairs = [Pair(i, "q", f"d{i}", QUERIES[0], DOCS[i], g, t) for i, (g, t) in
                 enumerate([(2, "relevant"), (0, "hard"), (1, "relevant"), (0, "hard")])]
        items = I.cls_pairs(pairs, per_query=4, seed=0)
        assert sorted((i.clean_pair_id, i.pair_id) for i in items) == [(0, 1), (0, 3), (2, 1), (2, 3)]
    clean, corrupted = _batches(tiny, items)
    clean_scores, corrupted_scores, patched = _sweep(tiny, experiment, clean, corrupted)
    layers, _ = tiny.shape
    last = P.Variant("resid_post", P.segments_of(experiment)[0])
    torch.testing.assert_close(patched[(layers - 1, last)], clean_scores, atol=1e-5, rtol=0)
    assert (clean_scores - corrupted_scores).abs().max() > 1e-3  # the experiment moves the score
    if experiment == "tfc1":  # the stream entering the first layer at every token: the clean run from there on
        torch.testing.assert_close(patched[(0, P.Variant("resid", "all"))], clean_scores, atol=1e-5, rtol=0)


def _module(lm, layer: int, component: str):
    base = lm.model.base_model.encoder.layer[layer]
    return {"resid": base, "resid_post": base, "attn": base.attention.output.dense, "mlp": base.output.dense}[component]


def _plain_loop(lm, clean, corrupted, variants):
    """One full forward of the Hugging Face model per (layer, variant), patched by forward hooks written here."""
    model = lm.model
    heads = model.config.num_attention_heads
    dh = model.config.hidden_size // heads
    captured: dict = {}

    def keep(name):
        def hook(module, args, output):
            captured[name] = (output[0] if isinstance(output, tuple) else output).detach().clone()
        return hook

    def keep_heads(name):
        def hook(module, args):
            captured[name] = args[0].detach().clone()  # the concatenated head outputs before the projection
        return hook

    handles = []
    for layer in range(model.config.num_hidden_layers):
        for component in ("resid_post", "attn", "mlp"):
            handles.append(_module(lm, layer, component).register_forward_hook(keep((component, layer))))
        handles.append(_module(lm, layer, "resid").register_forward_pre_hook(keep_heads(("resid", layer))))
        handles.append(_module(lm, layer, "attn").register_forward_pre_hook(keep_heads(("heads", layer))))
    with torch.no_grad():
        model(**clean.inputs)
    for h in handles:
        h.remove()
    clean_acts = dict(captured)
    seg = corrupted.segments.long()
    out = {}
    for (layer, v) in variants:
        where = (seg >= 0) if v.segment == "all" else (seg == SEGMENTS.index(v.segment))

        if v.component == "head":
            def patch(module, args, _layer=layer, _h=v.head, _where=where):
                x = args[0].clone()
                part = slice(_h * dh, (_h + 1) * dh)
                x[..., part] = torch.where(_where[..., None], clean_acts[("heads", _layer)][..., part], x[..., part])
                return (x,)
            handle = _module(lm, layer, "attn").register_forward_pre_hook(patch)
        elif v.component == "resid":
            def patch(module, args, _key=("resid", layer), _where=where):
                return (torch.where(_where[..., None], clean_acts[_key], args[0]), *args[1:])
            handle = _module(lm, layer, "resid").register_forward_pre_hook(patch)
        else:
            def patch(module, args, output, _key=(v.component, layer), _where=where):
                hidden = output[0] if isinstance(output, tuple) else output
                hidden = torch.where(_where[..., None], clean_acts[_key], hidden)
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
            handle = _module(lm, layer, v.component).register_forward_hook(patch)
        with torch.no_grad():
            out[(layer, v)] = lm.family.scores(lm, corrupted)
        handle.remove()
    return out


def test_the_batched_sweep_equals_a_plain_loop_of_full_forwards(tiny):
    clean, corrupted = _batches(tiny, _tfc1(tiny))
    _, corrupted_scores, patched = _sweep(tiny, "tfc1", clean, corrupted, rows=10_000, scale="score")
    want = _plain_loop(tiny, clean, corrupted, list(patched))
    assert len(patched) == 3 * (3 * 6 + 4) + 6  # layers x (components x segments + heads) + resid_post's segments
    for key, scores in patched.items():
        torch.testing.assert_close(scores, want[key], atol=1e-5, rtol=0, msg=str(key))
    heads = [s for k, s in patched.items() if k[1].component == "head"]
    assert max(float((s - corrupted_scores).abs().max()) for s in heads) > 1e-4  # head patches do move scores


def test_effect_is_the_recovered_share_and_null_below_epsilon():
    clean, corrupted = np.array([2.0, 1.0, 0.5]), np.array([1.0, 1.0 - 1e-4, 0.0])
    patched = np.array([1.5, 5.0, 0.5])
    e = P.effect(clean, corrupted, patched)
    assert e[0] == pytest.approx(0.5) and np.isnan(e[1]) and e[2] == pytest.approx(1.0)
