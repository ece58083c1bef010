"""Every chart the pages build keeps every label of its categorical axes.

Vega-Lite removes overlapping axis labels silently (``labelOverlap`` defaults to a removal strategy): the "20 heads
with the largest effect" chart once labelled 10 of its rows. The pages are driven with AppTest on the synthetic
store's full run (components, subspace, patching) and its default-like run (no optional tables), every Vega-Lite
spec they send is collected with its data, and each categorical (nominal or ordinal) x or y axis must

* keep its labels (an axis drawn, ``labels`` not false) and never remove overlapping ones (``labelOverlap: false``);
* give every category at least ``charts.MIN_STEP`` pixels: a step size, or a fixed extent divided by the number of
  categories, or, for an x axis stretched to its column, the narrowest plot width the app draws at 1280 px
  (``charts.NARROW_PLOT``) divided by it;
* cut a horizontal x label at its step (``labelLimit``), its full text in the tooltip.

The browser test checks the same in the drawn page (tests/app/test_browser.py).
"""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest

from app import charts as C
from tests.app.conftest import DL20, SMALL

PAGES = ["overview", "findings", "head_atlas", "directions", "ablations", "patching", "spectra", "pair_explorer", "sql", "compare"]
SIZE = {"x": "width", "y": "height"}


def _frames(element) -> dict[str, pd.DataFrame]:
    return {d.name: pa.ipc.open_stream(d.data.data).read_pandas() for d in element.proto.datasets}


def _drive(store, runs) -> list[tuple[str, dict, dict]]:
    """(where, spec, datasets) of every chart every page draws on each of ``runs`` of ``store`` (AppTest)."""
    from streamlit.testing.v1 import AppTest

    from tests.app.conftest import MAIN

    found = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATLAS_STORE", str(store))
        for run in runs:
            at = AppTest.from_file(str(MAIN), default_timeout=60)
            at.query_params["run"] = run
            at.run()
            for page in PAGES:
                at.switch_page(f"views/{page}.py").run()
                assert not at.exception, [e.value for e in at.exception]
                for i, el in enumerate(at.get("vega_lite_chart")):
                    found.append((f"{run}/{page}#{i}", json.loads(el.proto.spec), _frames(el)))
    return found


@pytest.fixture(scope="module")
def page_specs(store) -> list[tuple[str, dict, dict]]:
    """Every chart of every page on both runs, and the Pair explorer's live token map both ways round (the model
    does not run in tests: built from a frame of the page's shape)."""
    found = _drive(store, (DL20, SMALL))
    for n_src, n_dst in ((6, 40), (40, 6)):
        frame = pd.DataFrame([{"src_pos": s, "dst_pos": 10 + d, "src_token": f"tok{s}", "dst_token": f"word{d}",
                               "weight": 1.0 / n_dst, "exact": s == d} for s in range(n_src) for d in range(n_dst)])
        spec = C.token_heatmap(frame, title="t", x_title="x", y_title="y").to_dict()
        found.append((f"token_heatmap {n_src}x{n_dst}", spec,
                      {k: pd.DataFrame(v) for k, v in spec.get("datasets", {}).items()}))
    return found


def _axes(spec: dict, data: str | None = None, size: dict | None = None):
    """(channel, encodings of that channel in one view, data name, view size) for every x/y channel of every view;
    the layers of a layered view share their axis, so their encodings come together."""
    size = {k: spec[k] for k in ("width", "height") if k in spec} or dict(size or {})
    data = (spec.get("data") or {}).get("name", data)
    if "facet" in spec or "repeat" in spec:
        yield from _axes(spec["spec"], data, size)
        return
    for key in ("vconcat", "hconcat", "concat"):
        for sub in spec.get(key, []):
            yield from _axes(sub, data, size)
    if "layer" in spec:
        units = [(layer.get("encoding", {}), (layer.get("data") or {}).get("name", data)) for layer in spec["layer"]]
        for sub in spec["layer"]:
            if "layer" in sub:
                yield from _axes(sub, data, size)
    elif "encoding" in spec:
        units = [(spec["encoding"], data)]
    else:
        return
    for ch in ("x", "y"):
        encs = [(enc[ch], d) for enc, d in units if ch in enc and "field" in enc[ch]]
        if encs:
            yield ch, encs, size


def _categories(encs, datasets: dict[str, pd.DataFrame]) -> int:
    n = 0
    for enc, name in encs:
        if isinstance(enc.get("sort"), list):
            n = max(n, len(enc["sort"]))
        frames = [datasets[name]] if name in datasets else list(datasets.values())
        values = set()
        for f in frames:
            if enc["field"] in f.columns:
                values |= set(f[enc["field"]].dropna().astype(str))
        n = max(n, len(values))
    return n


def _problems(spec: dict, datasets: dict) -> list[str]:
    out = []
    for ch, encs, size in _axes(spec):
        if not any(e.get("type") in ("nominal", "ordinal") for e, _ in encs):
            continue
        field = encs[0][0]["field"]
        axis: dict = {}
        for enc, _ in encs:
            if enc.get("axis", {}) is None:
                axis = None
                break
            axis.update(enc.get("axis") or {})
        if axis is None or axis.get("labels") is False:
            out.append(f"{ch}={field}: labels hidden")
            continue
        if axis.get("labelOverlap") is not False:
            out.append(f"{ch}={field}: labelOverlap {axis.get('labelOverlap', 'default (removes labels)')}")
        n = _categories(encs, datasets)
        extent = size.get(SIZE[ch])
        if isinstance(extent, dict):
            px = extent["step"]
        elif isinstance(extent, (int, float)):
            px = extent / max(n, 1)
        elif ch == "y":
            px = 20  # Vega-Lite's default step of a discrete y axis
        else:
            px = C.NARROW_PLOT / max(n, 1)
        if px < C.MIN_STEP:
            out.append(f"{ch}={field}: {n} labels get {px:.0f} px each (< {C.MIN_STEP})")
        if ch == "x" and axis.get("labelAngle", 0) == 0 and n > 1 and axis.get("labelLimit", 10**6) > px:
            out.append(f"{ch}={field}: horizontal labels not cut at their {px:.0f} px (labelLimit "
                       f"{axis.get('labelLimit', 'unset')})")
    return out


def _all_problems(specs) -> dict[str, list[str]]:
    bad = {}
    for w, spec, datasets in specs:
        problems = _problems(spec, datasets)
        if problems:
            bad[f"{w} {str(spec.get('title'))[:60]!r}"] = problems
    return bad


@pytest.mark.slow
def test_every_label_shows_on_a_bert_base_sized_run_and_other_families(tmp_path, family_store):
    """The same rule (fast twin: the test below) on a 12 x 12 run with every optional table (the real MiniLM/BERT
    grid: 20 heads of the patching chart, 12 heads across a half column), a causal decoder and a MonoT5-like run
    (decoder cross-attention maps)."""
    from tests.app.synthetic import build_run

    big = build_run(tmp_path, model="base-ce", layers=12, heads=12, n_queries=3, seed=7)
    specs = _drive(tmp_path, [big.name]) + _drive(family_store, ["trec-dl-2020__tiny-decoder",
                                                                 "trec-dl-2020__tiny-monot5"])
    assert any("cross" in w.lower() or "Cross-attention" in str(s.get("title")) for w, s, _ in specs)
    assert any("The 20 heads" in str(s.get("title")) for _, s, _ in specs)
    bad = _all_problems(specs)
    assert not bad, json.dumps(bad, indent=1)


def test_every_categorical_axis_shows_every_label(page_specs):
    where = {w for w, _, _ in page_specs}
    # the charts of the offenders are among those checked
    assert {f"{DL20}/patching#1", f"{DL20}/ablations#3", f"{DL20}/ablations#4", f"{DL20}/head_atlas#1"} <= where
    assert sum(1 for _, spec, _ in page_specs for _ in _axes(spec)) > 40
    bad = _all_problems(page_specs)
    assert not bad, json.dumps(bad, indent=1)


def test_the_rule_catches_overlap_removal_and_crowded_axes():
    """The checker itself: Vega-Lite's defaults (labels removed when they overlap), 30 rows in 200 px, and
    a stretched x axis of 40 categories all fail; a stepped, non-removing axis passes."""
    rows = pd.DataFrame({"item": [f"item {i}" for i in range(30)], "v": range(30)})
    default = C.alt.Chart(rows).mark_bar().encode(y="item:N", x="v:Q").to_dict()
    crowded = C.alt.Chart(rows).mark_bar().encode(
        y=C.alt.Y("item:N", axis=C.alt.Axis(labelOverlap=False)), x="v:Q").properties(height=200).to_dict()
    wide = C.alt.Chart(pd.DataFrame({"item": range(40), "v": range(40)})).mark_bar().encode(
        x=C.alt.X("item:O", axis=C.alt.Axis(labelOverlap=False, labelAngle=-90)), y="v:Q").to_dict()
    good = C.alt.Chart(rows).mark_bar().encode(
        y=C.alt.Y("item:N", axis=C.band_axis()), x="v:Q").properties(height=C.alt.Step(C.MIN_STEP)).to_dict()

    def problems(spec):
        return _problems(spec, {k: pd.DataFrame(v) for k, v in spec.get("datasets", {}).items()})

    assert any("labelOverlap" in p for p in problems(default))
    assert any("30 labels get 7 px" in p for p in problems(crowded))
    assert any("40 labels" in p for p in problems(wide))
    assert problems(good) == []


def test_head_atlas_colour_range_is_fixed_per_kind_of_value_by_default(app, store):
    """Switching metrics keeps one colour scale: [0, 1] for a mean mass, [-1, 1] for a difference, [-2, 2] clamped
    for Cohen's d, each stated in the legend title; the toggle (``atlas_fixed=0`` in a link) gives the map its own."""
    def scale(at):
        spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
        color = spec["layer"][0]["encoding"]["color"]
        return color["scale"].get("domain"), color["title"]

    at = app(store, "head_atlas", run=DL20)
    assert scale(at) == ([0.0, 1.0], "Mean q_d (colour fixed to [0, 1])")
    at = app(store, "head_atlas", run=DL20, atlas_view="relevant_vs_hard")
    assert scale(at) == ([-1.0, 1.0], "q_d: relevant - hard (colour fixed to [-1, 1])")
    tips = json.dumps(json.loads(at.get("vega_lite_chart")[0].proto.spec)["layer"][0]["encoding"]["tooltip"])
    assert all(c in tips for c in ("run_effect_low", "run_effect_high"))  # the run's interval over queries
    at = app(store, "head_atlas", run=DL20, atlas_view="relevant_vs_hard", atlas_color="cohen_d")
    assert scale(at)[0] == [-2.0, 2.0] and "clamped" in scale(at)[1]
    at = app(store, "head_atlas", run=DL20, atlas_fixed="0")
    domain, title = scale(at)
    assert title == "Mean q_d" and domain is None
    at.toggle(key="atlas_fixed").set_value(True).run()
    assert scale(at)[0] == [0.0, 1.0] and "atlas_fixed" not in at.query_params
