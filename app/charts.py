"""Every chart of the app, as a plain function from a DataFrame to an ``alt.Chart``.

Over 350 lines on purpose: every chart lives here so that all share one style (titles, axis titles, scales,
how a NULL value is drawn) and ``tests/app/test_charts.py`` builds each one. No Streamlit here, so each chart can be built and checked in a test (and exported with
vl-convert). Every chart has a title and axis titles that say what is measured; a difference
uses a diverging scale centred on 0 (``domainMid=0`` and a symmetric domain) so that the sign
reads at a glance. Heatmaps of heads carry a point selection named ``cell`` on (layer, head)
that ``st.altair_chart(on_select=...)`` turns into a click. Segment names are drawn in the run's family's words
(:class:`app.family.Labels`); a NULL value is never drawn as 0: a grey cell with a cross and the reason in the
tooltip (heatmaps) or the reason written in the cell (the 5 x 5 matrix).
"""

from __future__ import annotations

import math

import altair as alt
import pandas as pd

from app.family import Labels
from precompute.names import PATCH_COMPONENTS, SEGMENTS

alt.data_transformers.disable_max_rows()

SEQUENTIAL = "viridis"
DIVERGING = "redblue"  # reversed below: blue = negative, red = positive
NEG_TYPE_COLORS = {"relevant": "#2ca02c", "hard": "#ff7f0e", "easy": "#1f77b4", "unjudged": "#7f7f7f"}
CELL = "cell"  # name of the (layer, head) selection of head heatmaps
POINT = "point"  # name of the (layer, component, segment) selection of the patching curves
MISSING_FILL = "#d0d0d0"  # cells whose value is NULL (not possible, undefined)
# Every label of a categorical axis is drawn (tests/app/test_chart_specs.py): Streamlit's theme draws axis labels at
# 12 px, which Vega needs about 20 px of axis per label to keep apart, so a categorical axis gets at least MIN_STEP
# pixels per category. A chart stretched to its column has, in the narrowest column the pages use at 1280 px (half
# the main area, ~400 px), about NARROW_PLOT pixels of plot once its axis and legend are drawn.
MIN_STEP = 20
NARROW_PLOT = 240
LABEL_LIMIT = 180  # px of a label of a vertical axis before it is cut ("…"); the full text is in the tooltip


def band_axis(**kwargs) -> alt.Axis:
    """A categorical axis that draws every label (Vega-Lite's default removes the ones that overlap) and cuts a long
    one at ``labelLimit`` (the marks' tooltips carry the full text)."""
    return alt.Axis(**{"labelOverlap": False, "labelLimit": LABEL_LIMIT, **kwargs})


def x_band(n: int, **kwargs) -> tuple[alt.Axis, alt.Step | None]:
    """(axis, width) of a categorical x axis of ``n`` categories with horizontal labels: stretched to its column
    while each category has ``MIN_STEP`` pixels of ``NARROW_PLOT`` there, else one ``MIN_STEP`` per category (the
    chart is then drawn at its own width, app.ui.chart); each label is cut at its share of the axis."""
    stretched = n * MIN_STEP <= NARROW_PLOT
    limit = NARROW_PLOT // max(n, 1) if stretched else MIN_STEP
    axis = band_axis(**{"labelAngle": 0, "labelLimit": max(limit - 2, 8), **kwargs})
    return axis, (None if stretched else alt.Step(MIN_STEP))


TITLE_CHAR_PX = 7  # width of a character of an axis title in Streamlit's theme (12 px font), rounded up


def wrapped(text: str, px: float) -> str | list[str]:
    """``text`` in lines of at most ``px`` pixels (a list: Vega draws one line each). A vertical axis title longer
    than its plot is drawn past the chart's top under Streamlit's autosize ("fit"), over the title and whatever
    sits above the chart."""
    per_line = max(int(px // TITLE_CHAR_PX), 8)
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= per_line:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines[0] if len(lines) == 1 else lines


FIT_DECORATION_PX = 90  # a fitted chart's height less its plot: its title, the x axis and its title


LAYER_AXIS = alt.Axis(format="d", tickMinStep=1)  # layers on a line chart: a number line, whatever the depth


def neg_type_scale(values=None) -> alt.Scale:
    names = [n for n in NEG_TYPE_COLORS if values is None or n in set(values)]
    extra = [v for v in (values or []) if v not in NEG_TYPE_COLORS]
    return alt.Scale(domain=names + extra, range=[NEG_TYPE_COLORS[n] for n in names] + ["#9467bd"] * len(extra))


# Fixed colour ranges of head heatmaps, per kind of value: every metric of the store is an attention mass or weight
# in [0, 1], so a difference of two lies in [-1, 1]; an effect size has no bound and is clamped to [-2, 2] (a
# "large" d is 0.8). One range per kind lets two maps, or one map under two metrics, be read on one scale.
FIXED_DOMAINS: dict[str, tuple[float, float]] = {"mass": (0.0, 1.0), "difference": (-1.0, 1.0),
                                                 "effect size": (-2.0, 2.0)}


def fixed_domain(kind: str, value_title: str) -> tuple[tuple[float, float], str]:
    """The fixed colour range of ``kind`` (a key of FIXED_DOMAINS) and the legend title that states it."""
    lo, hi = FIXED_DOMAINS[kind]
    clamp = ", clamped" if kind == "effect size" else ""
    return (lo, hi), f"{value_title} (colour fixed to [{lo:g}, {hi:g}]{clamp})"


def color_scale(values: pd.Series | None = None, *, diverging: bool = False,
                domain: tuple[float, float] | None = None) -> alt.Scale:
    """Sequential viridis, or a diverging red-blue scale centred on 0 with a symmetric domain.

    ``domain`` fixes the range (two maps drawn side by side then share one colour scale)."""
    if not diverging:
        return alt.Scale(scheme=SEQUENTIAL, domain=list(domain), clamp=True) if domain else alt.Scale(scheme=SEQUENTIAL)
    if domain is not None:
        values = pd.Series([float(domain[0]), float(domain[1])])
    bound = 0.0
    if values is not None and len(values):
        vals = pd.to_numeric(values, errors="coerce").abs()
        bound = float(vals.max()) if vals.notna().any() else 0.0
    bound = bound if bound > 0 and math.isfinite(bound) else 1.0
    return alt.Scale(scheme=DIVERGING, reverse=True, domainMid=0, domain=[-bound, bound], clamp=domain is not None)


# ---------------------------------------------------------------------------------------------
# Heatmaps
# ---------------------------------------------------------------------------------------------
def head_heatmap(
    df: pd.DataFrame,
    value: str,
    *,
    title: str,
    value_title: str,
    diverging: bool = False,
    tooltip: list[str] | None = None,
    selectable: bool = True,
    mark_significant: str | None = None,
    selected: tuple[int, int] | None = None,
    domain: tuple[float, float] | None = None,
    legend_title: str | None = None,
    missing: str = "no value",
) -> alt.Chart:
    """Layer x head heatmap of ``value`` (layer 0 on top). ``mark_significant``: a boolean column
    whose true cells get a star. ``selected``: the (layer, head) drawn with a black outline. Cells whose
    value is NULL are grey with a cross, ``missing`` (e.g. "not possible (causal)") in their tooltip. ``domain``
    fixes the colour range (see fixed_domain), ``legend_title`` says so."""
    tips = [alt.Tooltip("layer:O", title="layer"), alt.Tooltip("head:O", title="head"),
            alt.Tooltip(f"{value}:Q", title=value_title, format=".4f")]
    for col in tooltip or []:
        if col in df.columns and col not in ("layer", "head", value):
            kind = "Q" if pd.api.types.is_numeric_dtype(df[col]) else "N"
            tips.append(alt.Tooltip(f"{col}:{kind}", title=col, format=".4g") if kind == "Q"
                        else alt.Tooltip(f"{col}:{kind}", title=col))
    x_axis, width = x_band(df["head"].nunique() if "head" in df else 0)
    x = alt.X("head:O", title="Head", axis=x_axis)
    y = alt.Y("layer:O", title="Layer", sort="ascending", axis=band_axis())
    base = alt.Chart(df).encode(x=x, y=y)
    valid = df[value].notna() if value in df else pd.Series(dtype=bool)
    rect = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", title=legend_title or value_title,
                        legend=alt.Legend(titleLimit=320, orient="right") if valid.any() else None,
                        scale=color_scale(df[value] if value in df else None, diverging=diverging, domain=domain)),
        tooltip=tips,
    )
    layers = [rect]
    empty = _missing_cells(df[~valid], ["layer", "head"], missing, x=x, y=y) if len(valid) else []
    if selectable:
        sel = alt.selection_point(name=CELL, fields=["layer", "head"], on="click", clear="dblclick", toggle=False)
        rect = rect.add_params(sel).encode(
            opacity=alt.condition(sel, alt.value(1.0), alt.value(0.55)),
        )
        layers = [rect]
    layers += empty
    if mark_significant and mark_significant in df.columns:
        layers.append(
            base.transform_filter(alt.datum[mark_significant] == True)  # noqa: E712
            .mark_text(text="*", fontSize=16, color="black", baseline="middle")
        )
    if selected is not None:
        sel_df = pd.DataFrame([{"layer": int(selected[0]), "head": int(selected[1])}])
        layers.append(
            alt.Chart(sel_df).mark_rect(fill=None, stroke="black", strokeWidth=2.5).encode(x=x, y=y)
        )
    chart = alt.layer(*layers) if len(layers) > 1 else layers[0]
    chart = chart.properties(title=title, height=alt.Step(30))
    return chart.properties(width=width) if width is not None else chart


def _missing_cells(df: pd.DataFrame, keys: list[str], text: str, *, x: alt.X, y: alt.Y) -> list[alt.Chart]:
    """Grey cells with a cross for rows whose value is NULL, ``text`` in their tooltip (none when every row has one)."""
    if df.empty:
        return []
    d = df[keys].copy()
    d["status"] = text
    tips = [alt.Tooltip(f"{k}:O" if k in ("layer", "head") else f"{k}:N", title=k) for k in keys]
    tips.append(alt.Tooltip("status:N", title="value"))
    base = alt.Chart(d).encode(x=x, y=y, tooltip=tips)
    return [base.mark_rect(color=MISSING_FILL), base.mark_text(text="×", fontSize=13, color="#555555")]


def direction_matrix(df: pd.DataFrame, *, title: str, value: str = "mean", value_title: str = "Mean attention mass",
                     diverging: bool = False, labels: Labels | None = None) -> alt.Chart:
    """The 5 x 5 segment-to-segment matrix: rows = attending segment (src), columns = attended (dst), in the
    family's words. A NULL cell says why in the cell: "not possible (causal)" or "undefined"."""
    labels = labels or Labels()
    d = df.copy()
    d["from"] = d["src"].map(labels.segment)
    d["to"] = d["dst"].map(labels.segment)
    d["direction_label"] = d["direction"].map(labels.direction)
    d["status"] = ["" if pd.notna(v) else labels.missing(x) for v, x in zip(d[value], d["direction"])]
    d["status_text"] = d["status"].str.replace(" (", "\n(", regex=False)
    order = list(labels.names)
    # stretched to its column (a half column too): the names are vertical so that five fit a narrow one apart
    x = alt.X("to:N", sort=order, title="Attended segment (keys)",
              axis=band_axis(labelAngle=-90, labelLimit=NARROW_PLOT // 2))
    y = alt.Y("from:N", sort=order, title="Attending segment (queries of attention)", axis=band_axis())
    tips = [alt.Tooltip("direction:N"), alt.Tooltip("direction_label:N", title="meaning"),
            alt.Tooltip(f"{value}:Q", title=value_title, format=".4f"), alt.Tooltip("status:N", title="note")]
    base = alt.Chart(d).encode(x=x, y=y)
    ok = base.transform_filter(f"isValid(datum['{value}']) && isFinite(datum['{value}'])")
    rect = ok.mark_rect().encode(
        color=alt.Color(f"{value}:Q", title=value_title, scale=color_scale(d[value], diverging=diverging)),
        tooltip=tips,
    )
    text = ok.mark_text(baseline="middle", fontSize=13).encode(
        text=alt.Text(f"{value}:Q", format=".3f"),
        color=alt.value("white") if not diverging else alt.value("black"),
    )
    layers = [rect, text]
    if (d["status"] != "").any():
        miss = base.transform_filter("datum.status != ''")
        layers += [miss.mark_rect(color=MISSING_FILL).encode(tooltip=tips),
                   miss.mark_text(baseline="middle", fontSize=10, color="#333333", lineBreak="\n").encode(
                       text=alt.Text("status_text:N"))]
    return alt.layer(*layers).properties(title=title, height=alt.Step(44))


def segment_matrices(df: pd.DataFrame, *, title: str, value_title: str = "Attention mass",
                     labels: Labels | None = None, columns: int = 4) -> alt.FacetChart:
    """The 5 x 5 segment matrix of several heads (``head``, ``src``, ``dst``, ``value``), one small panel per head on
    one fixed [0, 1] colour scale, [CLS] and [SEP] rows and columns included: attention parked on them (the no-op
    pattern) reads beside Query->Document. A NULL mass (a direction a causal model cannot attend) is left blank."""
    labels = labels or Labels()
    d = df.copy()
    d["from"] = d["src"].map(labels.segment)
    d["to"] = d["dst"].map(labels.segment)
    d["panel"] = "head " + d["head"].astype(int).astype(str)
    order = list(labels.names)
    base = alt.Chart().encode(
        # vertical names: a 30 px column keeps five of them apart (at -45 degrees 'SEP1' and 'Document' overlapped)
        x=alt.X("to:N", sort=order, title="Attended segment", axis=band_axis(labelAngle=-90, labelLimit=80)),
        y=alt.Y("from:N", sort=order, title="Attending segment", axis=band_axis(labelLimit=80)),
    ).transform_filter("isValid(datum.value) && isFinite(datum.value)")
    rect = base.mark_rect().encode(
        color=alt.Color("value:Q", title=value_title, scale=alt.Scale(scheme=SEQUENTIAL, domain=[0, 1])),
        tooltip=[alt.Tooltip("panel:N", title="head"), alt.Tooltip("from:N"), alt.Tooltip("to:N"),
                 alt.Tooltip("value:Q", title=value_title, format=".3f")])
    text = base.mark_text(fontSize=9).encode(text=alt.Text("value:Q", format=".2f"),
                                             color=alt.condition("datum.value > 0.5", alt.value("black"),
                                                                 alt.value("white")))
    panels = list(dict.fromkeys(d.sort_values("head")["panel"]))
    return (alt.layer(rect, text, data=d).properties(width=alt.Step(30), height=alt.Step(22))
            .facet(facet=alt.Facet("panel:N", sort=panels, title=None), columns=columns)
            .properties(title=title))


# ---------------------------------------------------------------------------------------------
# Distributions
# ---------------------------------------------------------------------------------------------
def histogram(df: pd.DataFrame, *, title: str, x_title: str, group: str = "neg_type") -> alt.Chart:
    """Overlaid histograms from ``_binned`` output (bin_start, bin_end, n, share), one colour per group."""
    return (
        alt.Chart(df)
        .mark_bar(opacity=0.55, binSpacing=0)
        .encode(
            x=alt.X("bin_start:Q", title=x_title, bin="binned"),
            x2="bin_end:Q",
            y=alt.Y("share:Q", title=wrapped("Share of the group's pairs", 260 - FIT_DECORATION_PX), stack=None,
                    axis=alt.Axis(format="%")),
            color=alt.Color(f"{group}:N", title="Negative type", scale=neg_type_scale(list(df[group].unique()))),
            tooltip=[alt.Tooltip(f"{group}:N", title="Negative type"),
                     alt.Tooltip("bin_start:Q", title="from", format=".3f"),
                     alt.Tooltip("bin_end:Q", title="to", format=".3f"),
                     alt.Tooltip("n:Q", title="pairs"), alt.Tooltip("share:Q", title="share", format=".1%")],
        )
        .properties(title=title, height=260)
    )


def box_from_stats(df: pd.DataFrame, *, title: str, y_title: str) -> alt.Chart:
    """Box plots from precomputed min/q1/median/q3/max per negative type and grade."""
    d = df.copy()
    d["group"] = d["neg_type"] + " (grade " + d["grade"].astype(str) + ")"
    rank = {n: i for i, n in enumerate(NEG_TYPE_COLORS)}
    d["_order"] = [(rank.get(n, 99), -g) for n, g in zip(d["neg_type"], d["grade"])]
    order = list(d.sort_values("_order")["group"])
    d = d.drop(columns="_order")
    # one row per group (horizontal boxes): the group names read in full, however many groups the slice keeps
    y = alt.Y("group:N", title="Negative type and grade", sort=order, axis=band_axis())
    color = alt.Color("neg_type:N", title="Negative type", scale=neg_type_scale(list(d["neg_type"].unique())))
    tips = [alt.Tooltip("group:N", title="group"), alt.Tooltip("n:Q", title="pairs")] + [
        alt.Tooltip(f"{c}:Q", format=".4f") for c in ("min", "q1", "median", "mean", "q3", "max")]
    base = alt.Chart(d).encode(y=y, tooltip=tips)
    whisker = base.mark_rule().encode(x=alt.X("min:Q", title=y_title, scale=alt.Scale(zero=False)), x2="max:Q")
    box = base.mark_bar(size=18, opacity=0.8).encode(x=alt.X("q1:Q", title=y_title), x2="q3:Q", color=color)
    median = base.mark_tick(color="black", size=18, thickness=2).encode(x=alt.X("median:Q", title=y_title))
    return alt.layer(whisker, box, median).properties(title=title, height=alt.Step(30))


# ---------------------------------------------------------------------------------------------
# Lines, bars, scatter
# ---------------------------------------------------------------------------------------------
def direction_lines(df: pd.DataFrame, *, title: str, columns: int = 5, labels: Labels | None = None) -> alt.Chart:
    """Mean mass per layer, one line per negative type, one small panel per direction (family's words)."""
    labels = labels or Labels()
    d = df.copy()
    d["direction_label"] = d["direction"].map(labels.direction)
    order = [labels.direction(x) for x in dict.fromkeys(d["direction"])]
    chart = (
        alt.Chart(d)
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:Q", title="Layer", axis=LAYER_AXIS),
            y=alt.Y("mean:Q", title=wrapped("Mean attention mass", 130), scale=alt.Scale(zero=False)),
            color=alt.Color("neg_type:N", title="Negative type", scale=neg_type_scale(list(d["neg_type"].unique()))),
            tooltip=[alt.Tooltip("direction_label:N", title="direction"), alt.Tooltip("layer:O"),
                     alt.Tooltip("neg_type:N", title="negative type"), alt.Tooltip("mean:Q", format=".4f"),
                     alt.Tooltip("n:Q", title="pair x head rows")],
        )
        .properties(width=170, height=130)
        .facet(facet=alt.Facet("direction_label:N", title=None, sort=order), columns=columns)
        .resolve_scale(y="independent")
        .properties(title=title)
    )
    return chart


LEXICAL_KINDS = ("relevant", "hard", "easy")


def lexical_semantic(df: pd.DataFrame, *, title: str, labels: Labels | None = None) -> alt.VConcatChart:
    """Lexical vs semantic matching by layer from :meth:`matching_atlas.Run.lexical_by_layer` rows of two metrics
    (q_d_exact, q_d_other): top, the mass per layer for relevant pairs, hard and easy negatives with their bootstrap
    intervals over queries; bottom, relevant - hard and relevant - easy (means of per-query differences) with theirs,
    around a zero line. One column per metric."""
    labels = labels or Labels()
    names = {"q_d_exact": f"{labels.direction('q_d')}, exact-match document tokens",
             "q_d_other": f"{labels.direction('q_d')}, other document tokens"}
    order = [names.get(m, m) for m in dict.fromkeys(df["metric"])]
    kinds = pd.concat([df.assign(series=k, value=df[k], low=df[f"{k}_low"], high=df[f"{k}_high"],
                                 n_queries=df[f"n_queries_{k}"]) for k in LEXICAL_KINDS])
    diffs = pd.concat([df.assign(series=f"relevant - {k}", value=df[f"relevant_minus_{k}"],
                                 low=df[f"relevant_minus_{k}_low"], high=df[f"relevant_minus_{k}_high"],
                                 n_queries=df[f"n_queries_relevant_minus_{k}"]) for k in ("hard", "easy")])

    def panel(d: pd.DataFrame, y_title: str, colors: alt.Scale, zero: bool) -> alt.FacetChart:
        y_title = wrapped(y_title, 150)
        d = d.assign(metric_label=d["metric"].map(lambda m: names.get(m, m)))[
            ["metric_label", "layer", "series", "value", "low", "high", "n_queries"]]
        x = alt.X("layer:Q", title="Layer", axis=LAYER_AXIS)
        color = alt.Color("series:N", title=None, scale=colors)
        tips = [alt.Tooltip("metric_label:N", title="metric"), alt.Tooltip("layer:O"), alt.Tooltip("series:N"),
                alt.Tooltip("value:Q", title="mean over queries", format="+.4f"),
                alt.Tooltip("low:Q", title="95% CI low", format="+.4f"),
                alt.Tooltip("high:Q", title="95% CI high", format="+.4f"), alt.Tooltip("n_queries:Q", title="queries")]
        line = alt.Chart().mark_line(point=True).encode(
            x=x, y=alt.Y("value:Q", title=y_title, scale=alt.Scale(zero=False)), color=color, tooltip=tips)
        band = alt.Chart().mark_errorbar(ticks=True).encode(x=x, y=alt.Y("low:Q", title=y_title), y2="high:Q",
                                                              color=color)
        layers = [band, line]
        if zero:
            layers.insert(0, alt.Chart().mark_rule(color="gray", strokeDash=[4, 4]).encode(y=alt.datum(0)))
        return (alt.layer(*layers, data=d).properties(width=260, height=150)
                .facet(column=alt.Column("metric_label:N", title=None, sort=order)))

    kind_colors = neg_type_scale(list(LEXICAL_KINDS))
    diff_colors = alt.Scale(domain=["relevant - hard", "relevant - easy"],
                            range=[NEG_TYPE_COLORS["hard"], NEG_TYPE_COLORS["easy"]])
    top = panel(kinds, "Mean attention mass (per query, then over queries)", kind_colors, zero=False)
    bottom = panel(diffs, "Relevant minus negative (mean per-query difference)", diff_colors, zero=True)
    return alt.vconcat(top, bottom).resolve_scale(color="independent").properties(title=title)


def layer_sweep(df: pd.DataFrame, *, title: str, y_title: str) -> alt.Chart:
    """Delta of the measure when a condition is applied to one layer at a time, with its 95% interval over queries
    where the frame has ``delta_low`` / ``delta_high`` (Run.delta_intervals)."""
    d = df.copy()
    d["condition_mode"] = d["condition"] + " / " + d["mode"]
    x = alt.X("layer:Q", title="Ablated layer", axis=LAYER_AXIS)
    y_title = wrapped(y_title, 280 - FIT_DECORATION_PX)
    color = alt.Color("condition_mode:N", title="Condition / mode")
    tips = [alt.Tooltip("condition_id:N", title="condition"), alt.Tooltip("layer:O"),
            alt.Tooltip("mean:Q", format=".4f"), alt.Tooltip("delta:Q", format="+.4f"),
            alt.Tooltip("p_holm:Q", title="p (Holm)", format=".3g")]
    line = alt.Chart(d).mark_line(point=True).encode(x=x, y=alt.Y("delta:Q", title=y_title), color=color)
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(color="gray", strokeDash=[4, 4]).encode(
        y=alt.Y("y:Q", title=y_title))
    layers = [zero]
    if {"delta_low", "delta_high"} <= set(d.columns):  # the delta's 95% interval over queries
        tips += [alt.Tooltip("delta_low:Q", title="95% CI low", format="+.4f"),
                 alt.Tooltip("delta_high:Q", title="95% CI high", format="+.4f")]
        layers.append(alt.Chart(d).mark_errorbar(ticks=True).encode(
            x=x, y=alt.Y("delta_low:Q", title=y_title), y2="delta_high:Q", color=color))
    layers.append(line.encode(tooltip=tips))
    return alt.layer(*layers).properties(title=title, height=280)


def delta_bars(df: pd.DataFrame, *, title: str, x_title: str, label: str = "qid", value: str = "delta") -> alt.Chart:
    """Horizontal bars of a signed delta per item, coloured on a diverging scale around 0."""
    order = list(df.sort_values(value)[label].astype(str))
    d = df.copy()
    d[label] = d[label].astype(str)
    tips = [alt.Tooltip(f"{label}:N")] + [
        alt.Tooltip(f"{c}:Q", format=".4f") if pd.api.types.is_numeric_dtype(d[c]) else alt.Tooltip(f"{c}:N")
        for c in d.columns if c != label
    ]
    return (
        alt.Chart(d)
        .mark_bar()
        .encode(
            y=alt.Y(f"{label}:N", sort=order, title="Query", axis=band_axis()),
            x=alt.X(f"{value}:Q", title=x_title),
            color=alt.Color(f"{value}:Q", title=x_title, scale=color_scale(d[value], diverging=True)),
            tooltip=tips,
        )
        .properties(title=title, height=alt.Step(MIN_STEP))
    )


def grouped_deltas(df: pd.DataFrame, *, title: str, x_title: str) -> alt.Chart:
    """Delta per condition for several runs, bars side by side (columns condition_id, run, delta)."""
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            y=alt.Y("condition_id:N", title="Condition", axis=band_axis()),
            yOffset="run:N",
            x=alt.X("delta:Q", title=x_title),
            color=alt.Color("run:N", title="Run", legend=alt.Legend(orient="bottom", direction="vertical")),
            tooltip=[alt.Tooltip("condition_id:N", title="condition"), alt.Tooltip("run:N"),
                     alt.Tooltip("delta:Q", format="+.4f")],
        )
        # one step per condition (not per bar of the offset): 12 px per run's bar, at least MIN_STEP for its label
        .properties(title=title, height=alt.Step(max(MIN_STEP, 12 * max(df["run"].nunique(), 1)), **{"for": "position"}))
    )


def scatter(df: pd.DataFrame, x: str, y: str, *, title: str, x_title: str, y_title: str,
            color: str | None = None, color_title: str | None = None, tooltip: list[str] | None = None) -> alt.Chart:
    tips = [alt.Tooltip(c, format=".4g") if pd.api.types.is_numeric_dtype(df[c]) else alt.Tooltip(c)
            for c in (tooltip or []) if c in df.columns]
    enc = dict(
        x=alt.X(f"{x}:Q", title=x_title, scale=alt.Scale(zero=False)),
        y=alt.Y(f"{y}:Q", title=wrapped(y_title, 320 - FIT_DECORATION_PX), scale=alt.Scale(zero=False)),
        tooltip=tips,
    )
    if color:
        enc["color"] = alt.Color(f"{color}:O", title=color_title or color, scale=alt.Scale(scheme="viridis"))
    points = alt.Chart(df).mark_circle(size=70, opacity=0.8).encode(**enc)
    return points.properties(title=title, height=320)


SPECTRUM_HEIGHT = 320  # a half column's spectrum keeps ~230 px of plot beside a 12-head legend at 1280 x 800


def spectrum_lines(df: pd.DataFrame, y: str, *, title: str, y_title: str) -> alt.Chart:
    """One line per head over the singular-value index k."""
    d = df.copy()
    d["head_label"] = "L" + d["layer"].astype(str) + ".H" + d["head"].astype(str)
    order = list(dict.fromkeys(d.sort_values(["layer", "head"])["head_label"]))
    return (
        alt.Chart(d)
        .mark_line(point=alt.OverlayMarkDef(size=18))
        .encode(
            x=alt.X("k:Q", title="Singular value index k (0 = largest)"),
            y=alt.Y(f"{y}:Q", title=wrapped(y_title, SPECTRUM_HEIGHT - FIT_DECORATION_PX)),
            color=alt.Color("head_label:N", title="Head", sort=order,
                            legend=alt.Legend(columns=2 if len(order) > 8 else 1, symbolLimit=64)),
            tooltip=[alt.Tooltip("head_label:N", title="head"), alt.Tooltip("k:Q"),
                     alt.Tooltip("sigma:Q", format=".4f"), alt.Tooltip("alignment:Q", format=".3f")],
        )
        .properties(title=title, height=SPECTRUM_HEIGHT)
    )


def token_heatmap(df: pd.DataFrame, *, title: str, x_title: str, y_title: str) -> alt.Chart:
    """Token-level attention weights in input order: attending tokens (``y_title``) against attended ones
    (``x_title``). The side with more tokens (a passage) runs down the rows, one ``MIN_STEP`` each, the other along
    the columns with vertical labels: every token is labelled, whatever the passage's length."""
    d = df.copy()
    d["row"] = d["src_pos"].astype(str).str.zfill(3) + " " + d["src_token"]
    d["col"] = d["dst_pos"].astype(str).str.zfill(3) + " " + d["dst_token"]
    rows, cols, row_title, col_title = "row", "col", y_title, x_title
    if d["col"].nunique() > d["row"].nunique():
        rows, cols, row_title, col_title = "col", "row", x_title, y_title
    return (
        alt.Chart(d)
        .mark_rect()
        .encode(
            x=alt.X(f"{cols}:N", title=col_title, sort=sorted(d[cols].unique()),
                    axis=band_axis(labelExpr="slice(datum.label, 4)", labelAngle=-90, labelLimit=120)),
            y=alt.Y(f"{rows}:N", title=row_title, sort=sorted(d[rows].unique()),
                    axis=band_axis(labelExpr="slice(datum.label, 4)", labelLimit=120)),
            color=alt.Color("weight:Q", title="Attention weight", scale=alt.Scale(scheme="viridis")),
            tooltip=[alt.Tooltip("src_token:N", title="from token"), alt.Tooltip("dst_token:N", title="to token"),
                     alt.Tooltip("weight:Q", format=".4f"), alt.Tooltip("exact:N", title="same token id")],
        )
        .properties(title=title, height=alt.Step(MIN_STEP), width=alt.Step(MIN_STEP))
    )


# ---------------------------------------------------------------------------------------------
# Components, subspaces, patching, depth, cross-attention
# ---------------------------------------------------------------------------------------------
def component_grid(df: pd.DataFrame, *, title: str, value_title: str, labels: Labels | None = None,
                   mark_significant: str | None = None) -> alt.Chart:
    """Layer x segment grid of a component ablation's delta, one panel per component (attn, mlp): columns
    ``layer``, ``component``, ``segment`` ('all' or a segment), ``delta``; diverging around 0."""
    labels = labels or Labels()
    d = df.copy()
    d["where"] = [("all tokens" if s == "all" else labels.segment(s)) for s in d["segment"]]
    order = ["all tokens"] + [labels.segment(s) for s in SEGMENTS]
    tips = [alt.Tooltip("condition_id:N", title="condition"), alt.Tooltip("layer:O"), alt.Tooltip("where:N", title="tokens"),
            alt.Tooltip("delta:Q", title=value_title, format="+.4f"), alt.Tooltip("p_holm:Q", title="p (Holm)", format=".3g")]
    base = alt.Chart().encode(
        x=alt.X("where:N", title="Removed at", sort=order, axis=band_axis(labelAngle=0, labelLimit=66)),
        y=alt.Y("layer:O", title="Layer", sort="ascending", axis=band_axis()),
    )
    rect = base.mark_rect().encode(
        color=alt.Color("delta:Q", title=value_title, scale=color_scale(d["delta"], diverging=True)), tooltip=tips)
    layers = [rect]
    if mark_significant and mark_significant in d.columns:
        layers.append(base.transform_filter(alt.datum[mark_significant] == True)  # noqa: E712
                      .mark_text(text="*", fontSize=16, color="black", baseline="middle"))
    return (alt.layer(*layers, data=d).properties(width=alt.Step(70), height=alt.Step(26))
            .facet(column=alt.Column("component:N", title="Component (block output removed)"))
            .properties(title=title))


def metric_deltas(df: pd.DataFrame, *, title: str, x_title: str, labels: Labels | None = None) -> alt.Chart:
    """Change of each of a head's metrics (columns ``metric``, ``delta``, ``mean``, ``baseline``), one bar each."""
    labels = labels or Labels()
    d = df.copy()
    d["label"] = [f"{m}: {labels.metric(m)}" for m in d["metric"]]
    tooltip = [alt.Tooltip("label:N", title="metric"), alt.Tooltip("baseline:Q", title="without", format=".4f"),
               alt.Tooltip("mean:Q", title="with", format=".4f"), alt.Tooltip("delta:Q", format="+.4f")]
    return _diverging_bars(d, "label", "Metric of the head", "delta", x_title, tooltip, title=title, step=MIN_STEP)


PATCHING_COUNTS = {"n_queries": "queries (the interval resamples them)", "n": "pairs with an effect",
                   "n_null": "NULL effects"}


def effect_intervals(df: pd.DataFrame, *, title: str, x_title: str, label: str = "item", value: str = "mean",
                     low: str = "ci_lo", high: str = "ci_hi", y_title: str = "Patched activation",
                     counts: dict[str, str] | None = None) -> alt.Chart:
    """An estimate with its 95% confidence interval, one row per item (``label``), largest first: a point at
    ``value`` on a rule from ``low`` to ``high``, around a dashed zero. ``counts``: columns shown in the tooltip with
    their titles (default: a patching effect's pairs)."""
    d = df.copy()
    order = list(d.sort_values(value, ascending=False)[label].astype(str))
    d[label] = d[label].astype(str)
    tips = [alt.Tooltip(f"{label}:N", title=y_title), alt.Tooltip(f"{value}:Q", title=x_title, format="+.4f"),
            alt.Tooltip(f"{low}:Q", title="95% CI low", format="+.4f"),
            alt.Tooltip(f"{high}:Q", title="95% CI high", format="+.4f")]
    tips += [alt.Tooltip(f"{c}:Q", title=t) for c, t in (PATCHING_COUNTS if counts is None else counts).items()
             if c in d.columns]
    base = alt.Chart(d).encode(y=alt.Y(f"{label}:N", sort=order, title=y_title, axis=band_axis()), tooltip=tips)
    bar = base.mark_rule(strokeWidth=2, color="#555555").encode(x=alt.X(f"{low}:Q", title=x_title), x2=f"{high}:Q")
    # the colour repeats the position (no legend); the outline keeps a point near 0 (white) visible
    point = base.mark_point(filled=True, size=60, stroke="#333333", strokeWidth=0.6).encode(
        x=alt.X(f"{value}:Q", title=x_title),
        color=alt.Color(f"{value}:Q", legend=None, scale=color_scale(d[value], diverging=True)))
    zero = alt.Chart(pd.DataFrame({"x": [0.0]})).mark_rule(color="gray", strokeDash=[4, 4]).encode(
        x=alt.X("x:Q", title=x_title))
    return alt.layer(zero, bar, point).properties(title=title, height=alt.Step(MIN_STEP))


def component_curves(df: pd.DataFrame, *, title: str, y_title: str, labels: Labels | None = None,
                     segment_names: dict[str, str] | None = None) -> alt.Chart:
    """The share of the score gap recovered (ratio of sums) per layer with its 95% band (bootstrap over queries), one
    line per segment, one panel per component (resid, attn, mlp). Points carry a selection named ``point`` on (layer,
    component, segment): a click opens its pairs."""
    labels = labels or Labels()
    d = df.copy()
    names = dict(segment_names or {})
    d["where"] = [names.get(s) or ("all tokens" if s == "all" else labels.segment(s)) for s in d["segment"]]
    order = list(dict.fromkeys(d["where"]))
    sel = alt.selection_point(name=POINT, fields=["layer", "component", "segment"], on="click", clear="dblclick",
                              toggle=False)
    color = alt.Color("where:N", title="Patched at", sort=order)
    tips = [alt.Tooltip("component:N"), alt.Tooltip("where:N", title="tokens"), alt.Tooltip("layer:O"),
            alt.Tooltip("ratio:Q", title="share recovered (ratio of sums)", format="+.4f"),
            alt.Tooltip("ratio_low:Q", title="95% interval low", format="+.4f"),
            alt.Tooltip("ratio_high:Q", title="95% interval high", format="+.4f"),
            alt.Tooltip("n_queries:Q", title="queries"), alt.Tooltip("n:Q", title="pairs with an effect"),
            alt.Tooltip("n_null:Q", title="NULL effects"),
            alt.Tooltip("mean:Q", title="plain mean over pairs (descriptive)", format="+.4f")]
    x = alt.X("layer:Q", title="Layer", axis=LAYER_AXIS)
    y_title = wrapped(y_title, 200)
    band = alt.Chart().mark_area(opacity=0.15).encode(x=x, y=alt.Y("ratio_low:Q", title=y_title), y2="ratio_high:Q",
                                                      color=color)
    line = alt.Chart().mark_line().encode(x=x, y=alt.Y("ratio:Q", title=y_title), color=color)
    points = alt.Chart().mark_point(filled=True, size=50).encode(
        x=x, y=alt.Y("ratio:Q", title=y_title), color=color, tooltip=tips,
        opacity=alt.condition(sel, alt.value(1.0), alt.value(0.5))).add_params(sel)
    return (alt.layer(band, line, points, data=d).properties(width=230, height=200)
            .facet(column=alt.Column("component:N", title="Patched component", sort=list(PATCH_COMPONENTS)))
            .properties(title=title))


def depth_lines(df: pd.DataFrame, *, title: str, y_title: str) -> alt.Chart:
    """A per-layer value against relative depth (columns ``depth``, ``value``, ``run``, ``layer``, ``layers``),
    one line per run: models of different depths on one axis."""
    d = df.rename(columns={"value": "layer_value"})
    return (
        alt.Chart(d).mark_line(point=True).encode(
            x=alt.X("depth:Q", title="Relative depth ((layer + 0.5) / layers)", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("layer_value:Q", title=wrapped(y_title, 280 - FIT_DECORATION_PX), scale=alt.Scale(zero=False)),
            color=alt.Color("run:N", title="Run", legend=alt.Legend(labelLimit=360)),  # right: a legend above or
            # below is counted inside the chart's height by Streamlit's autosize and squashes the plot
            tooltip=[alt.Tooltip("run:N"), alt.Tooltip("layer:O"), alt.Tooltip("layers:Q", title="layers"),
                     alt.Tooltip("depth:Q", format=".3f"), alt.Tooltip("layer_value:Q", title="value", format=".4f")],
        ).properties(title=title, height=280)
    )


def _diverging_bars(d: pd.DataFrame, y: str, y_title: str, x: str, x_title: str, tooltip: list, *, title: str,
                    step: int) -> alt.Chart:
    """Horizontal bars of a signed value, in the rows' order, coloured on a diverging scale centred on 0."""
    return (
        alt.Chart(d).mark_bar().encode(
            y=alt.Y(f"{y}:N", title=y_title, sort=list(d[y]), axis=band_axis()),
            x=alt.X(f"{x}:Q", title=x_title),
            color=alt.Color(f"{x}:Q", title=x_title, scale=color_scale(d[x], diverging=True)),
            tooltip=tooltip,
        ).properties(title=title, height=alt.Step(step))
    )


def depth_bins(df: pd.DataFrame, *, title: str, x_title: str) -> alt.Chart:
    """B - A per depth bin (columns ``bin``, ``diff``, ``layers_a``, ``layers_b``, ``value_a``, ``value_b``)."""
    d = df.copy()
    d["bin_label"] = [f"{b}: A {la} / B {lb}" for b, la, lb in zip(d["bin"], d["layers_a"], d["layers_b"])]
    tooltip = [alt.Tooltip("bin_label:N", title="bin"), alt.Tooltip("value_a:Q", title="A", format=".4f"),
               alt.Tooltip("value_b:Q", title="B", format=".4f"), alt.Tooltip("diff:Q", format="+.4f")]
    return _diverging_bars(d, "bin_label", "Depth bin (layers of A / of B)", "diff", x_title, tooltip, title=title,
                           step=22)


def cross_attention_maps(df: pd.DataFrame, *, title: str, value_title: str) -> alt.Chart:
    """Decoder layer x head heatmaps of one encoder segment's cross-attention mass, one panel per negative type
    (columns ``layer``, ``head``, ``neg_type``, ``mean``, ``n``)."""
    tips = [alt.Tooltip("neg_type:N", title="negative type"), alt.Tooltip("layer:O", title="decoder layer"),
            alt.Tooltip("head:O"), alt.Tooltip("mean:Q", title=value_title, format=".4f"),
            alt.Tooltip("n:Q", title="pairs")]
    return (
        alt.Chart(df).mark_rect().encode(
            x=alt.X("head:O", title="Head", axis=band_axis(labelAngle=0, labelLimit=MIN_STEP)),
            y=alt.Y("layer:O", title="Decoder layer", sort="ascending", axis=band_axis()),
            color=alt.Color("mean:Q", title=value_title, scale=color_scale(df["mean"])),
            tooltip=tips,
        ).properties(width=alt.Step(22), height=alt.Step(22))
        .facet(column=alt.Column("neg_type:N", title="Negative type", sort=list(NEG_TYPE_COLORS)))
        .properties(title=title)
    )


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------
def to_png(chart: alt.TopLevelMixin, scale: float = 2.0) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_png(chart.to_json(), scale=scale)


def to_svg(chart: alt.TopLevelMixin) -> str:
    import vl_convert as vlc

    return vlc.vegalite_to_svg(chart.to_json())
