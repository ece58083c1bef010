"""Ablations: both kernels equal a hand-written forward pass, the baseline is exact, rows with nothing left are zero,
stacked conditions equal single ones, and the stage is incremental and resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from precompute.analyses import ablations as A
from precompute import conditions as C
from precompute.kernels.state import BatchState, Intervention, Site
from precompute.families.loading import load
from precompute.names import DIRECTIONS, SEGMENTS
from precompute.pairs import Pair
from precompute.families.segments import encode
from precompute.store.writer import RunWriter, StoreError
from tests.tiny_models import DOCS, QUERIES, build

LAYERS, HEADS = 3, 4
TABLES = ("ablation_conditions", "ablation_scores", "ablation_metrics", "ablation_summary")


def sensitive_model(kind: str, folder: Path) -> Path:
    """A tiny model whose scores move when attention is ablated (the default init scores every pair alike)."""
    from transformers import AutoModelForSequenceClassification

    build(kind, folder, layers=LAYERS, heads=HEADS)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * (0.25 if p.dim() > 1 else 0.1))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["bert", "roberta"])
def tiny(request, tmp_path_factory):
    return load(str(sensitive_model(request.param, tmp_path_factory.mktemp(request.param))))


# ------------------------------------------------------------------------------------------------------------------
# An independent forward pass: numpy float64, written from the module weights and the definitions of the modes
# ------------------------------------------------------------------------------------------------------------------


def _np(t):
    return t.detach().double().numpy()


def _ln(x, mod, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * _np(mod.weight) + _np(mod.bias)


def _lin(x, mod):
    return x @ _np(mod.weight).T + _np(mod.bias)


def reference_scores(model, inputs, segments, remove, heads, mode) -> np.ndarray:
    """Scores of a BERT/RoBERTa cross-encoder with (src, dst) segment attention removed and heads zeroed.

    remove: [batch, layers, 5, 5] bool; heads: [batch, layers, heads] bool. Embeddings come from the model's own
    module; everything after is re-written here (attention, removal, output projection, layer norms, FFN, head).
    """
    from scipy.special import erf

    cfg = model.config
    base = model.bert if cfg.model_type == "bert" else model.roberta
    with torch.no_grad():
        x = _np(base.embeddings(input_ids=inputs["input_ids"], token_type_ids=inputs.get("token_type_ids")))
    seg = segments.numpy().astype(int)
    b, s, hidden = x.shape
    nh = cfg.num_attention_heads
    dh = hidden // nh
    eps = cfg.layer_norm_eps
    for layer_i, layer in enumerate(base.encoder.layer):
        att = layer.attention.self
        split = lambda t: t.reshape(b, s, nh, dh).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = split(_lin(x, att.query)), split(_lin(x, att.key)), split(_lin(x, att.value))
        ctx = np.zeros((b, nh, s, dh))
        for r in range(b):
            real = seg[r] >= 0
            removed = np.zeros((s, s), bool)
            for i in range(s):
                for j in range(s):
                    removed[i, j] = real[i] and real[j] and remove[r, layer_i, seg[r, i], seg[r, j]]
            for h in range(nh):
                logits = q[r, h] @ k[r, h].T / np.sqrt(dh)
                w = np.zeros((s, s))
                for i in range(s):
                    if mode == "mask":
                        keys = real & ~removed[i]
                        if not keys.any():
                            continue  # nothing left to attend to: zeros
                        e = np.exp(logits[i, keys] - logits[i, keys].max())
                        w[i, keys] = e / e.sum()
                    else:
                        e = np.exp(logits[i, real] - logits[i, real].max())
                        w[i, real] = e / e.sum()
                        w[i, removed[i]] = 0.0  # post-softmax, not renormalised
                if not heads[r, layer_i, h]:
                    ctx[r, h] = w @ v[r, h]
        merged = ctx.transpose(0, 2, 1, 3).reshape(b, s, hidden)
        a = _ln(x + _lin(merged, layer.attention.output.dense), layer.attention.output.LayerNorm, eps)
        f = _lin(a, layer.intermediate.dense)
        f = 0.5 * f * (1 + erf(f / np.sqrt(2)))
        x = _ln(a + _lin(f, layer.output.dense), layer.output.LayerNorm, eps)
    cls = x[:, 0]
    if cfg.model_type == "bert":
        logits = _lin(np.tanh(_lin(cls, model.bert.pooler.dense)), model.classifier)
    else:
        logits = _lin(np.tanh(_lin(cls, model.classifier.dense)), model.classifier.out_proj)
    return logits[:, 0]


def _P(i: int) -> Pair:
    return Pair(i, f"q{i}", f"d{i}", QUERIES[i], DOCS[i], 1, "relevant")


PAIRS = [_P(i) for i in range(len(QUERIES))]
CONDITIONS = ["q_d@all", "cross@all", "into_cls@all", "d_q@1", "into_sep@0-1", "all@all"]


def _conditions(mode: str) -> list[C.Condition]:
    req = C.AblationRequest(sets=("directions", "groups", "heads"), modes=(mode,), layers=("all", "1", "0-1"),
                            heads=("1.2", "2.0"))
    by_id = {c.condition_id: c for c in req.conditions(LAYERS, HEADS)}
    return [by_id[f"{c}/{mode}"] for c in CONDITIONS] + [by_id["head:1.2/zero"], by_id["head:2.0/zero"]]


def _reference(lm, conditions, mode):
    batch = encode(lm.tokenizer, QUERIES, DOCS, 64)
    edits = C.forward_edits(conditions, LAYERS, HEADS)
    dirs, heads = edits.directions, edits.heads
    dirs = dirs if dirs is not None else torch.zeros(len(conditions), LAYERS, 5, 5, dtype=torch.bool)
    heads = heads if heads is not None else torch.zeros(len(conditions), LAYERS, HEADS, dtype=torch.bool)
    out = {}
    for i, c in enumerate(conditions):
        rep = lambda t: t[i : i + 1].repeat(len(QUERIES), *[1] * (t.dim() - 1)).numpy()  # noqa: E731
        out[c.condition_id] = reference_scores(lm.model, batch.inputs, batch.segments, rep(dirs), rep(heads), mode)
    return out


@pytest.mark.parametrize("kernel", ("sdpa", "eager"))
@pytest.mark.parametrize("mode", C.MODES)
def test_ablations_equal_hand_written_forward(tiny, mode, kernel):
    """Single direction, groups, a layer and a layer range, every direction, two heads: all within 1e-5."""
    conditions = _conditions(mode)
    want = _reference(tiny, conditions, mode)
    nothing = reference_scores(tiny.model, *_encoded(tiny), np.zeros((4, LAYERS, 5, 5), bool), np.zeros((4, LAYERS, HEADS), bool), mode)
    for c in conditions:  # one condition per call, then all sharing forwards (below)
        got = A.score_conditions(tiny, PAIRS, [c], batch_size=4, max_length=64, kernel=kernel)[c.condition_id]
        np.testing.assert_allclose(got, want[c.condition_id], atol=1e-5, err_msg=c.condition_id)
        assert np.abs(want[c.condition_id] - nothing).max() > 1e-3, f"{c.condition_id} changes nothing: vacuous test"
    directions = [c for c in conditions if c.kind != "head"]
    stacked = A.score_conditions(tiny, PAIRS, directions, batch_size=4 * len(directions), max_length=64, kernel=kernel)
    for c in directions:
        np.testing.assert_allclose(stacked[c.condition_id], want[c.condition_id], atol=1e-5, err_msg=c.condition_id)


def _encoded(lm):
    batch = encode(lm.tokenizer, QUERIES, DOCS, 64)
    return batch.inputs, batch.segments


def test_kernels_agree_and_reference_matches_model_without_ablation(tiny):
    """The hand-written pass is the model itself when nothing is removed (checks the reference, not the code)."""
    inputs, segments = _encoded(tiny)
    with torch.no_grad():
        logits = tiny.model(**inputs).logits[:, 0].numpy()
    ref = reference_scores(tiny.model, inputs, segments, np.zeros((4, LAYERS, 5, 5), bool), np.zeros((4, LAYERS, HEADS), bool), "zero")
    np.testing.assert_allclose(logits, ref, atol=1e-5)


def test_ablating_nothing_reproduces_the_baseline(tiny):
    """Eager kernel, same batches: bit-identical to the summary pass's pairs.score. SDPA kernel: bit-identical to a
    plain SDPA scoring pass, and within 1e-5 of pairs.score (two kernels, two summation orders)."""
    from precompute.analyses.summaries import plain_scores, summarise_chunk

    pairs = [_P(i) for i in range(4)]
    pairs_part, _, _ = summarise_chunk(tiny, pairs, batch_size=2, max_length=64)
    stored = dict(zip(pairs_part.column("pair_id").to_pylist(), pairs_part.column("score").to_numpy()))
    stored = np.array([stored[p.pair_id] for p in pairs], np.float32)
    none = [C.parse("none")]
    eager = A.score_conditions(tiny, pairs, none, batch_size=2, max_length=64, kernel="eager")["none"]
    assert np.array_equal(eager, stored)
    sdpa = A.score_conditions(tiny, pairs, none, batch_size=2, max_length=64, kernel="sdpa")["none"]
    np.testing.assert_array_equal(sdpa, plain_scores(tiny, pairs, batch_size=2, max_length=64, implementation="sdpa"))
    np.testing.assert_allclose(sdpa, stored, atol=1e-5)
    # stacked with a real condition (all-False rows beside removing rows, same pair batches): the matrix products
    # now see twice the rows, which changes their blocking, hence float noise instead of bit equality
    q_d = [c for c in _conditions("zero") if c.condition_id == "q_d@all/zero"]
    mixed = A.score_conditions(tiny, pairs, none + q_d, batch_size=4, max_length=64, kernel="eager")["none"]
    np.testing.assert_allclose(mixed, stored, atol=1e-5)


@pytest.mark.parametrize("kernel", ("sdpa", "eager"))
def test_fully_masked_rows_give_zeros_not_nan(tiny, kernel):
    """Mask mode with every direction removed: the attention output is exactly zero on every real row, scores are
    finite; removing everything a query token attends to zeroes only the query rows."""
    torch.manual_seed(0)
    seg = torch.tensor([[0, 1, 1, 2, 3, 3, 3, 4, -1, -1], [0, 1, 2, 3, 3, 3, 3, 3, 3, 4]])
    b, s, h, d = 2, seg.shape[1], 3, 8
    q, k, v = (torch.randn(b, h, s, d) for _ in range(3))
    for src in ("all", "q"):
        dirs = torch.zeros(b, 1, 5, 5, dtype=torch.bool)
        if src == "all":
            dirs[:] = True
        else:
            dirs[:, :, SEGMENTS.index("q")] = True
        iv = Intervention("mask", dirs, None)
        out = _attention(kernel, q, k, v, seg, iv)  # [batch, seq, head, dim]
        assert torch.isfinite(out).all()
        gone = (seg >= 0) if src == "all" else (seg == SEGMENTS.index("q"))
        assert out[gone].abs().max() == 0
        if src == "q":  # the other rows still attend
            assert (out[(seg >= 0) & ~gone].abs().amax(-1) > 0).all()
    every = [c for c in C.AblationRequest(sets=("groups",), modes=("mask",)).conditions(LAYERS, HEADS) if c.condition == "all"]
    scores = A.score_conditions(tiny, PAIRS, every, batch_size=4, max_length=64, kernel=kernel)["all@all/mask"]
    assert np.isfinite(scores).all()


def _attention(kernel, q, k, v, seg, iv):
    """One attention call of ``kernel`` outside a model, with the batch state set as a probe's forward sets it."""
    from precompute.kernels import probe
    from precompute.kernels import sdpa
    from precompute.kernels import eager

    mask = (seg >= 0)[:, None, None, :].expand(-1, 1, seg.shape[1], -1)
    module = torch.nn.Identity()  # stands for the layer's attention module, mapped to layer 0
    probe._ACTIVE = BatchState(seg.long(), torch.zeros_like(seg), sites={id(module): Site("self", 0)}, intervention=iv)
    try:
        if kernel == "sdpa":
            return sdpa.ablation_attention(module, q, k, v, mask, scaling=q.shape[-1] ** -0.5)[0]
        additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
        return eager.atlas_attention(module, q, k, v, additive, scaling=q.shape[-1] ** -0.5)[0]
    finally:
        probe._ACTIVE = None


def test_stacked_conditions_equal_one_per_forward(tiny):
    """Several conditions sharing forwards (rows = pairs x conditions) give the scores of one condition per forward
    (1e-5: a stacked forward holds batch_size // k pairs, so padding differs)."""
    conditions = [c for c in _conditions("zero")]
    alone = {c.condition_id: A.score_conditions(tiny, PAIRS, [c], batch_size=4, max_length=64)[c.condition_id] for c in conditions}
    for stack in (2, 3):
        for group in C.forward_groups(conditions, stack):
            together = A.score_conditions(tiny, PAIRS, group, batch_size=4, max_length=64)
            for c in group:
                np.testing.assert_allclose(together[c.condition_id], alone[c.condition_id], atol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# Condition names and flags
# ------------------------------------------------------------------------------------------------------------------


def test_default_conditions_are_25_directions_and_the_groups():
    conds = C.AblationRequest().conditions(6, 12)
    ids = [c.condition_id for c in conds]
    assert ids[0] == "none" and len(ids) == len(set(ids)) == 1 + 25 + len(C.GROUPS)
    assert {f"{d}@all/zero" for d in DIRECTIONS} | {f"{g}@all/zero" for g in C.GROUPS} == set(ids[1:])
    by = {c.condition_id: c for c in conds}
    assert by["q_d@all/zero"].row() == {"condition_id": "q_d@all/zero", "condition": "q_d", "mode": "zero", "layers": "all",
                                        "layer": None, "head": None, "kind": "direction", "analysis": "attention",
                                        "directions": "q_d", "component": None, "segment": None, "k": None,
                                        "operation": None, "factor": None, "alignments": None}
    assert by["cross@all/zero"].directions == ("q_d", "d_q") and by["all@all/zero"].directions == DIRECTIONS
    assert set(by["into_cls@all/zero"].directions) == {f"{s}_cls" for s in SEGMENTS}


def test_layer_sweeps_heads_modes_and_user_groups():
    req = C.AblationRequest(sets=("groups", "layers", "heads"), modes=("zero", "mask"), layers=("0-5", "3", "2-4"),
                            groups=("qd=Q->D,D->Q", "Query->Document", "*->SEP2"), sweep=("q_d", "qd"), heads=("3.*", "*.0"))
    by = {c.condition_id: c for c in req.conditions(6, 12)}
    assert "qd@all/mask" in by and by["qd@all/mask"].directions == ("q_d", "d_q")  # 0-5 covers every layer: 'all'
    assert by["q_d@3/zero"].kind == "direction" and by["q_d@3/zero"].layer == 3  # given first with --ablation-layers 3
    assert by["q_d@4/zero"].kind == "layer_sweep" and by["qd@5/mask"].kind == "layer_sweep"
    assert by["into_sep2@2-4/zero"].layer_indices(6) == (2, 3, 4) and by["into_sep2@2-4/zero"].layer is None  # equals a built-in
    heads = sorted((c.layer, c.head) for c in by.values() if c.kind == "head")
    assert heads == sorted({(3, h) for h in range(12)} | {(l, 0) for l in range(6)})
    assert by["head:3.5/zero"].row()["layers"] == "3" and by["head:3.5/zero"].mode == "zero"


@pytest.mark.parametrize("spec,want", [
    ("Q->D,D->Q", ("q_d", "d_q")), ("q_d+d_q", ("q_d", "d_q")), ("Q<->D", ("q_d", "d_q")),
    ("query->document", ("q_d",)), ("*->CLS", tuple(f"{s}_cls" for s in SEGMENTS)), ("q_*", tuple(f"q_{t}" for t in SEGMENTS)),
    ("cross, cls_cls", ("cls_cls", "q_d", "d_q")),
])
def test_direction_specs(spec, want):
    assert C.parse_directions(spec) == tuple(d for d in DIRECTIONS if d in want)


@pytest.mark.parametrize("bad", ["Q->X", "", "foo", "q_d_d"])
def test_bad_direction_specs(bad):
    with pytest.raises(C.AblationSpecError):
        C.parse_directions(bad)


def test_flag_errors_and_help(capsys):
    from precompute.cli import build_parser, main

    text = build_parser().format_help()
    assert all(d in text for d in DIRECTIONS) and all(g in text for g in C.GROUPS)
    for argv in (["--ablations", "directions,bogus"], ["--ablations", "none,groups"], ["--ablation-mode", "soft"],
                 ["--ablation-layers", "a-b"], ["--ablation-heads", "3"], ["--ablation-group", "none=q_d"],
                 ["--ablation-sweep", "cross,Q<->D"], ["--measures", "nDCG@"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2, argv
    with pytest.raises(C.AblationSpecError):
        C.AblationRequest(layers=("7",)).conditions(6, 12)
    with pytest.raises(C.AblationSpecError):
        C.AblationRequest(sets=("heads",), heads=("6.0",)).conditions(6, 12)


def test_cli_flags_reach_the_config():
    from precompute.cli import build_parser, config_from_args

    args = build_parser().parse_args(["--ablations", "directions,layers", "--ablation-mode", "zero,mask", "--ablation-layers",
                                      "all,0-2", "--ablation-group", "x=Q->D", "--ablation-group", "q_d,d_q", "--measures",
                                      "nDCG@10,RR@10", "--ablation-stack", "4", "--ablation-kernel", "eager"])
    cfg = config_from_args(args)
    assert cfg.ablations == ("directions", "layers") and cfg.ablation_modes == ("zero", "mask")
    assert cfg.ablation_layers == ("all", "0-2") and cfg.ablation_groups == ("x=Q->D", "q_d,d_q")
    assert cfg.measures == ("nDCG@10", "RR@10") and cfg.ablation_stack == 4 and cfg.ablation_kernel == "eager"
    assert config_from_args(build_parser().parse_args(["--ablations", "none"])).ablations == ()


# ------------------------------------------------------------------------------------------------------------------
# The stage: tables, incremental reruns, resume after a failure
# ------------------------------------------------------------------------------------------------------------------


def run_job(dataset: Path, model: Path, out: Path, **overrides):
    """A finished job (summaries + ablations only) of ``model`` over the first 3 queries of ``dataset``."""
    from precompute.config import JobConfig
    from precompute.job import run

    settings = dict(dataset=str(dataset), model=str(model), out=out, cache=out.parent / "cache", easy_negatives=2,
                    max_queries=3, batch_size=4, chunk_size=8, progress=False, stages=("summaries", "ablations"),
                    ablations=("groups",))
    cfg = JobConfig(**{**settings, **overrides})
    return cfg, run(cfg)


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    return sensitive_model("bert", tmp_path_factory.mktemp("sensitive-bert"))


def read(root: Path, table: str):
    t = pq.read_table(root / f"{table}.parquet")
    return t.sort_by([(c, "ascending") for c in ("condition_id", "scope", "measure", "qid", "pair_id") if c in t.column_names])


class _Count:
    """Wraps ablation.score_conditions and records the condition ids it scores."""

    def __init__(self, monkeypatch):
        self.ids: list[str] = []
        self._orig = A.score_conditions
        monkeypatch.setattr(A, "score_conditions", self)

    def __call__(self, lm, pairs, conditions, **kw):
        self.ids += [c.condition_id for c in conditions]
        return self._orig(lm, pairs, conditions, **kw)


def test_tables_manifest_and_baseline(tiny_dataset, bert_folder, tmp_path):
    cfg, root = run_job(tiny_dataset, bert_folder, tmp_path / "run")
    manifest = json.loads((root / "manifest.json").read_text())
    n_pairs = manifest["counts"]["pairs"]
    ids = ["none", *(f"{g}@all/zero" for g in C.GROUPS)]
    ab = manifest["ablations"]
    assert sorted(ab["conditions"]) == sorted(ids) and ab["counts"] == {"baseline": 1, "group": len(C.GROUPS)}
    assert ab["kernel"] == "sdpa" and ab["measures"] == ["nDCG@10"] and ab["scopes"] == ["pairs"]
    for table in TABLES:
        assert manifest["tables"][table]["rows"] == pq.ParquetFile(root / f"{table}.parquet").metadata.num_rows
    scores = read(root, "ablation_scores").to_pydict()
    assert len(scores["pair_id"]) == len(ids) * n_pairs
    base = {p: s for c, p, s in zip(scores["condition_id"], scores["pair_id"], scores["score"]) if c == "none"}
    stored = pq.read_table(root / "pairs.parquet", columns=["pair_id", "score"]).to_pydict()
    np.testing.assert_allclose([base[p] for p in stored["pair_id"]], stored["score"], atol=1e-5)
    assert not (root / "_parts").exists()
    conditions = read(root, "ablation_conditions").to_pylist()
    assert {r["condition_id"]: r["directions"] for r in conditions}["cross@all/zero"] == "q_d,d_q"


def test_rerun_computes_only_missing_conditions(tiny_dataset, bert_folder, tmp_path, monkeypatch):
    """groups, then groups + heads in the same folder = groups + heads at once; the rerun scores only the heads;
    a third run asking for less keeps everything."""
    run_job(tiny_dataset, bert_folder, tmp_path / "inc")
    count = _Count(monkeypatch)
    _, inc = run_job(tiny_dataset, bert_folder, tmp_path / "inc", ablations=("groups", "heads"), ablation_heads=("2.*",))
    assert set(count.ids) == {f"head:2.{h}/zero" for h in range(HEADS)}
    count.ids.clear()
    _, once = run_job(tiny_dataset, bert_folder, tmp_path / "once", ablations=("groups", "heads"), ablation_heads=("2.*",))
    for table in TABLES:
        assert read(inc, table).equals(read(once, table)), table
    count.ids.clear()
    run_job(tiny_dataset, bert_folder, tmp_path / "inc", ablations=("groups",))
    assert count.ids == []
    assert read(inc, "ablation_summary").num_rows == 1 + len(C.GROUPS) + HEADS
    assert json.loads((inc / "manifest.json").read_text())["ablations"]["last_request"]["computed_now"] == 0


def test_resume_after_a_failure_mid_pass(tiny_dataset, bert_folder, tmp_path, monkeypatch):
    """The pass dies after 5 parts: the parts stay, no table is half-written, the rerun computes only the rest and
    ends with the tables of an uninterrupted run."""
    _, ref = run_job(tiny_dataset, bert_folder, tmp_path / "ref")
    original, written = RunWriter.write_part, []

    def flaky(self, table, key, data):
        if table == "ablation_scores":
            if len(written) == 5:
                raise RuntimeError("injected failure")
            written.append(key)
        return original(self, table, key, data)

    monkeypatch.setattr(RunWriter, "write_part", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        run_job(tiny_dataset, bert_folder, tmp_path / "cut")
    cut = tmp_path / "cut"
    assert len(list((cut / "_parts" / "ablation_scores").glob("*.parquet"))) == 5
    assert not any((cut / f"{t}.parquet").exists() for t in TABLES)
    monkeypatch.setattr(RunWriter, "write_part", original)
    count = _Count(monkeypatch)
    _, cut = run_job(tiny_dataset, bert_folder, cut)
    n_chunks = -(-json.loads((cut / "manifest.json").read_text())["counts"]["pairs"] // 8)
    assert len(count.ids) == (1 + len(C.GROUPS)) * n_chunks - 5
    for table in TABLES:
        assert read(cut, table).equals(read(ref, table)), table
    assert not (cut / "_parts").exists()


def test_folder_settings_are_checked(tiny_dataset, bert_folder, tmp_path):
    out = tmp_path / "run"
    run_job(tiny_dataset, bert_folder, out, ablations=("directions",), ablation_groups=("mine=Q->D",),
            ablation_layers=("2",))
    with pytest.raises(ValueError, match="mine@2/zero was computed"):
        run_job(tiny_dataset, bert_folder, out, ablations=("directions",), ablation_groups=("mine=D->Q",), ablation_layers=("2",))
    with pytest.raises(StoreError, match="--ablation-kernel"):
        run_job(tiny_dataset, bert_folder, out, ablation_kernel="eager")
    _, skipped = run_job(tiny_dataset, bert_folder, tmp_path / "none", ablations=())
    assert not any((skipped / f"{t}.parquet").exists() for t in TABLES)
    assert "ablations" not in json.loads((skipped / "manifest.json").read_text())
