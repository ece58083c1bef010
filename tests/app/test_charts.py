"""Charts are plain functions: titles, axis titles, diverging scales around 0, export."""

from __future__ import annotations

import pytest

import pandas as pd

from app import charts as C
from matching_atlas import Run, depth
from matching_atlas.opening import inspect_run
from app.family import Labels
from matching_atlas.slice import Slice
from tests.app.conftest import DL20
from tests.app.synthetic import TEMPLATE_LABELS


@pytest.fixture(scope="module")
def con(store):
    return Run(inspect_run(store / DL20))


def _all_charts(con):
    sl = Slice()
    diff = con.head_difference("q_d", "relevant_vs_easy", where=sl).assign(sig=lambda d: d["cohen_d"] > 1)
    comp = con.component_effects(measure="nDCG@10", scope="pairs").dropna(subset=["layer"])
    heads = con.patching_heads("tfc1", where=sl)
    prof = depth.layer_profile(con.head_means("q_d", where=sl), "mean", 3)
    return {
        "heatmap": C.head_heatmap(con.head_means("q_d", where=sl), "mean", title="t", value_title="v", selected=(1, 1)),
        "diff": C.head_heatmap(diff, "diff", title="t", value_title="v", diverging=True, mark_significant="sig"),
        "matrix": C.direction_matrix(con.direction_matrix(where=sl), title="t"),
        "hist": C.histogram(con.score_histogram(where=sl), title="t", x_title="x"),
        "box": C.box_from_stats(con.head_values(1, 1, "q_d", where=sl), title="t", y_title="y"),
        "lines": C.direction_lines(con.direction_by_layer(("q_d", "d_q"), where=sl), title="t"),
        "sweep": C.layer_sweep(con.layer_sweeps(measure="nDCG@10", scope="pairs"), title="t", y_title="y"),
        "bars": C.delta_bars(con.per_query("q_d@all/zero", measure="nDCG@10", scope="pairs", where=sl), title="t",
                             x_title="x"),
        "scatter": C.scatter(con.alignment_vs_contrast("q_d", "relevant_vs_easy", where=sl), "alignment_score", "cohen_d",
                             title="t", x_title="x", y_title="y", color="layer"),
        "spectrum": C.spectrum_lines(con.spectra(where=sl), "sigma", title="t", y_title="y"),
        "components": C.component_grid(comp.astype({"layer": "int64"}), title="t", value_title="v"),
        "subspace": C.metric_deltas(con.subspace_metric_deltas("qk:2.1:k1/remove"), title="t", x_title="x"),
        "intervals": C.effect_intervals(heads.assign(item=heads["layer"].astype(str)), title="t", x_title="x"),
        "curves": C.component_curves(con.patching_components("tfc1", where=sl), title="t", y_title="y"),
        "depth": C.depth_lines(pd.concat([prof.assign(run="A"), prof.assign(run="B")]), title="t", y_title="y"),
        "bins": C.depth_bins(depth.align_by_depth(prof, 3, prof, 3), title="t", x_title="x"),
        "lexical": C.lexical_semantic(con.lexical_by_layer().query("metric in ('q_d_exact', 'q_d_other')"), title="t"),
        "cross": C.cross_attention_maps(pd.DataFrame({"layer": [0, 0], "head": [0, 1], "neg_type": ["relevant", "easy"],
                                                      "mean": [0.2, 0.4], "n": [3, 3]}), title="t", value_title="v"),
    }


def _encodings(spec):
    for key in ("layer", "spec", "vconcat", "hconcat"):
        if key in spec:
            for sub in spec[key] if isinstance(spec[key], list) else [spec[key]]:
                yield from _encodings(sub)
    if "encoding" in spec:
        yield spec["encoding"]


def test_every_chart_has_a_title_and_axis_titles(con):
    for name, chart in _all_charts(con).items():
        spec = chart.to_dict()
        assert spec.get("title"), name
        encs = list(_encodings(spec))
        assert encs, name
        for enc in encs:
            for ch in ("x", "y"):
                if ch in enc and "field" in enc[ch]:
                    assert enc[ch].get("title"), (name, ch, enc[ch])


def test_difference_maps_diverge_around_zero(con):
    spec = _all_charts(con)["diff"].to_dict()
    scale = spec["layer"][0]["encoding"]["color"]["scale"]
    assert scale["domainMid"] == 0 and scale["scheme"] == C.DIVERGING
    lo, hi = scale["domain"]
    assert lo == -hi and hi > 0
    seq = _all_charts(con)["heatmap"].to_dict()
    assert seq["layer"][0]["encoding"]["color"]["scale"]["scheme"] == C.SEQUENTIAL


def test_heatmap_cells_are_selectable(con):
    spec = _all_charts(con)["heatmap"].to_dict()
    params = spec["layer"][0].get("params") or spec.get("params")
    assert params[0]["name"] == C.CELL and params[0]["select"]["fields"] == ["layer", "head"]


def test_export_png_and_svg(con):
    chart = _all_charts(con)["diff"]
    png = C.to_png(chart, scale=1)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert C.to_svg(chart).lstrip().startswith("<svg")


def test_null_values_are_drawn_as_such(con):
    """A NULL cell is grey with its reason (matrix: written in the cell; heatmap: in the tooltip), never 0."""
    lab = Labels(names=tuple(TEMPLATE_LABELS[s] for s in ("cls", "q", "sep1", "d", "sep2")), causal=True)
    m = con.direction_matrix(where=Slice())
    m.loc[m["direction"] == "q_d", "mean"] = float("nan")
    spec = C.direction_matrix(m, title="t", labels=lab).to_dict()
    assert len(spec["layer"]) == 4 and "Prefix" in str(spec) and "CLS" not in str(spec["layer"][0]["encoding"])
    grid = con.head_means("q_d", where=Slice())
    grid.loc[0, "mean"] = float("nan")
    spec = C.head_heatmap(grid, "mean", title="t", value_title="v", missing="not possible (causal)").to_dict()
    assert any(isinstance(layer.get("mark"), dict) and layer["mark"].get("color") == C.MISSING_FILL
               for layer in spec["layer"])
    assert "not possible (causal)" in str(spec["datasets"])


def test_patching_curves_are_clickable(con):
    spec = C.component_curves(con.patching_components("tfc1", where=Slice()), title="t", y_title="y").to_dict()
    params = spec.get("params") or [p for layer in spec["spec"]["layer"] for p in layer.get("params", [])]
    assert params[0]["name"] == C.POINT and params[0]["select"]["fields"] == ["layer", "component", "segment"]
