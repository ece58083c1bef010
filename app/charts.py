"""Every chart of the app, as a plain function from a DataFrame to an ``alt.Chart``.

No Streamlit here, so each chart can be built and checked in a test (and exported with
vl-convert). Every chart has a title and axis titles that say what is measured; a difference
uses a diverging scale centred on 0 (``domainMid=0`` and a symmetric domain) so that the sign
reads at a glance. Heatmaps of heads carry a point selection named ``cell`` on (layer, head)
that ``st.altair_chart(on_select=...)`` turns into a click.
"""

from __future__ import annotations

import math

import altair as alt
import pandas as pd

from precompute.names import SEGMENT_LABELS, SEGMENTS, direction_label, metric_label

alt.data_transformers.disable_max_rows()

SEQUENTIAL = "viridis"
DIVERGING = "redblue"  # reversed below: blue = negative, red = positive
NEG_TYPE_COLORS = {"relevant": "#2ca02c", "hard": "#ff7f0e", "easy": "#1f77b4", "unjudged": "#7f7f7f"}
CELL = "cell"  # name of the (layer, head) selection of head heatmaps


def neg_type_scale(values=None) -> alt.Scale:
    names = [n for n in NEG_TYPE_COLORS if values is None or n in set(values)]
    extra = [v for v in (values or []) if v not in NEG_TYPE_COLORS]
    return alt.Scale(domain=names + extra, range=[NEG_TYPE_COLORS[n] for n in names] + ["#9467bd"] * len(extra))


def color_scale(values: pd.Series | None = None, *, diverging: bool = False,
                domain: tuple[float, float] | None = None) -> alt.Scale:
    """Sequential viridis, or a diverging red-blue scale centred on 0 with a symmetric domain.

    ``domain`` fixes the range (two maps drawn side by side then share one colour scale)."""
    if not diverging:
        return alt.Scale(scheme=SEQUENTIAL, domain=list(domain)) if domain else alt.Scale(scheme=SEQUENTIAL)
    if domain is not None:
        values = pd.Series([float(domain[0]), float(domain[1])])
    bound = 0.0
    if values is not None and len(values):
        vals = pd.to_numeric(values, errors="coerce").abs()
        bound = float(vals.max()) if vals.notna().any() else 0.0
    bound = bound if bound > 0 and math.isfinite(bound) else 1.0
    return alt.Scale(scheme=DIVERGING, reverse=True, domainMid=0, domain=[-bound, bound])


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
) -> alt.Chart:
    """Layer x head heatmap of ``value`` (layer 0 on top). ``mark_significant``: a boolean column
    whose true cells get a star. ``selected``: the (layer, head) drawn with a black outline."""
    tips = [alt.Tooltip("layer:O", title="layer"), alt.Tooltip("head:O", title="head"),
            alt.Tooltip(f"{value}:Q", title=value_title, format=".4f")]
    for col in tooltip or []:
        if col in df.columns and col not in ("layer", "head", value):
            kind = "Q" if pd.api.types.is_numeric_dtype(df[col]) else "N"
            tips.append(alt.Tooltip(f"{col}:{kind}", title=col, format=".4g") if kind == "Q"
                        else alt.Tooltip(f"{col}:{kind}", title=col))
    base = alt.Chart(df).encode(
        x=alt.X("head:O", title="Head", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("layer:O", title="Layer", sort="ascending"),
    )
    rect = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", title=value_title, legend=alt.Legend(titleLimit=320, orient="right"),
                        scale=color_scale(df[value] if value in df else None, diverging=diverging, domain=domain)),
        tooltip=tips,
    )
    layers = [rect]
    if selectable:
        sel = alt.selection_point(name=CELL, fields=["layer", "head"], on="click", clear="dblclick", toggle=False)
        rect = rect.add_params(sel).encode(
            opacity=alt.condition(sel, alt.value(1.0), alt.value(0.55)),
        )
        layers = [rect]
    if mark_significant and mark_significant in df.columns:
        layers.append(
            base.transform_filter(alt.datum[mark_significant] == True)  # noqa: E712
            .mark_text(text="*", fontSize=16, color="black", baseline="middle")
        )
    if selected is not None:
        sel_df = pd.DataFrame([{"layer": int(selected[0]), "head": int(selected[1])}])
        layers.append(
            alt.Chart(sel_df).mark_rect(fill=None, stroke="black", strokeWidth=2.5)
            .encode(x=alt.X("head:O", title="Head"), y=alt.Y("layer:O", title="Layer"))
        )
    chart = alt.layer(*layers) if len(layers) > 1 else layers[0]
    return chart.properties(title=title, height=alt.Step(30))


def direction_matrix(df: pd.DataFrame, *, title: str, value: str = "mean", value_title: str = "Mean attention mass",
                     diverging: bool = False) -> alt.Chart:
    """The 5 x 5 segment-to-segment matrix: rows = attending segment (src), columns = attended (dst)."""
    d = df.copy()
    d["from"] = d["src"].map(SEGMENT_LABELS)
    d["to"] = d["dst"].map(SEGMENT_LABELS)
    order = [SEGMENT_LABELS[s] for s in SEGMENTS]
    base = alt.Chart(d).encode(
        x=alt.X("to:N", sort=order, title="Attended segment (keys)", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("from:N", sort=order, title="Attending segment (queries of attention)"),
    )
    rect = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", title=value_title, scale=color_scale(d[value], diverging=diverging)),
        tooltip=[alt.Tooltip("direction:N"), alt.Tooltip("from:N"), alt.Tooltip("to:N"),
                 alt.Tooltip(f"{value}:Q", title=value_title, format=".4f")],
    )
    text = base.mark_text(baseline="middle", fontSize=13).encode(
        text=alt.Text(f"{value}:Q", format=".3f"),
        color=alt.value("white") if not diverging else alt.value("black"),
    )
    return alt.layer(rect, text).properties(title=title, width=alt.Step(80), height=alt.Step(44))


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
            y=alt.Y("share:Q", title="Share of the group's pairs", stack=None, axis=alt.Axis(format="%")),
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
    x = alt.X("group:N", title="Negative type and grade", sort=order, axis=alt.Axis(labelAngle=-30))
    color = alt.Color("neg_type:N", title="Negative type", scale=neg_type_scale(list(d["neg_type"].unique())))
    tips = [alt.Tooltip("group:N", title="group"), alt.Tooltip("n:Q", title="pairs")] + [
        alt.Tooltip(f"{c}:Q", format=".4f") for c in ("min", "q1", "median", "mean", "q3", "max")]
    base = alt.Chart(d).encode(x=x, tooltip=tips)
    whisker = base.mark_rule().encode(y=alt.Y("min:Q", title=y_title, scale=alt.Scale(zero=False)), y2="max:Q")
    box = base.mark_bar(size=22, opacity=0.8).encode(y=alt.Y("q1:Q", title=y_title), y2="q3:Q", color=color)
    median = base.mark_tick(color="black", size=22, thickness=2).encode(y=alt.Y("median:Q", title=y_title))
    return alt.layer(whisker, box, median).properties(title=title, height=280)


# ---------------------------------------------------------------------------------------------
# Lines, bars, scatter
# ---------------------------------------------------------------------------------------------
def direction_lines(df: pd.DataFrame, *, title: str, columns: int = 5) -> alt.Chart:
    """Mean mass per layer, one line per negative type, one small panel per direction."""
    d = df.copy()
    d["direction_label"] = d["direction"].map(direction_label)
    order = [direction_label(x) for x in dict.fromkeys(d["direction"])]
    chart = (
        alt.Chart(d)
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:O", title="Layer", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("mean:Q", title="Mean attention mass", scale=alt.Scale(zero=False)),
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


def layer_sweep(df: pd.DataFrame, *, title: str, y_title: str) -> alt.Chart:
    """Delta of the measure when a condition is applied to one layer at a time."""
    d = df.copy()
    d["condition_mode"] = d["condition"] + " / " + d["mode"]
    line = (
        alt.Chart(d)
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:O", title="Ablated layer", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("delta:Q", title=y_title),
            color=alt.Color("condition_mode:N", title="Condition / mode"),
            tooltip=[alt.Tooltip("condition_id:N", title="condition"), alt.Tooltip("layer:O"),
                     alt.Tooltip("mean:Q", format=".4f"), alt.Tooltip("delta:Q", format="+.4f"),
                     alt.Tooltip("p_holm:Q", title="p (Holm)", format=".3g")],
        )
    )
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(color="gray", strokeDash=[4, 4]).encode(
        y=alt.Y("y:Q", title=y_title))
    return alt.layer(zero, line).properties(title=title, height=280)


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
            y=alt.Y(f"{label}:N", sort=order, title="Query"),
            x=alt.X(f"{value}:Q", title=x_title),
            color=alt.Color(f"{value}:Q", title=x_title, scale=color_scale(d[value], diverging=True)),
            tooltip=tips,
        )
        .properties(title=title, height=alt.Step(14))
    )


def grouped_deltas(df: pd.DataFrame, *, title: str, x_title: str) -> alt.Chart:
    """Delta per condition for several runs, bars side by side (columns condition_id, run, delta)."""
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            y=alt.Y("condition_id:N", title="Condition"),
            yOffset="run:N",
            x=alt.X("delta:Q", title=x_title),
            color=alt.Color("run:N", title="Run", legend=alt.Legend(orient="bottom", direction="vertical")),
            tooltip=[alt.Tooltip("condition_id:N", title="condition"), alt.Tooltip("run:N"),
                     alt.Tooltip("delta:Q", format="+.4f")],
        )
        .properties(title=title, height=alt.Step(9))
    )


def scatter(df: pd.DataFrame, x: str, y: str, *, title: str, x_title: str, y_title: str,
            color: str | None = None, color_title: str | None = None, tooltip: list[str] | None = None) -> alt.Chart:
    tips = [alt.Tooltip(c, format=".4g") if pd.api.types.is_numeric_dtype(df[c]) else alt.Tooltip(c)
            for c in (tooltip or []) if c in df.columns]
    enc = dict(
        x=alt.X(f"{x}:Q", title=x_title, scale=alt.Scale(zero=False)),
        y=alt.Y(f"{y}:Q", title=y_title, scale=alt.Scale(zero=False)),
        tooltip=tips,
    )
    if color:
        enc["color"] = alt.Color(f"{color}:O", title=color_title or color, scale=alt.Scale(scheme="viridis"))
    points = alt.Chart(df).mark_circle(size=70, opacity=0.8).encode(**enc)
    return points.properties(title=title, height=320)


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
            y=alt.Y(f"{y}:Q", title=y_title),
            color=alt.Color("head_label:N", title="Head", sort=order,
                            legend=alt.Legend(columns=2 if len(order) > 8 else 1, symbolLimit=64)),
            tooltip=[alt.Tooltip("head_label:N", title="head"), alt.Tooltip("k:Q"),
                     alt.Tooltip("sigma:Q", format=".4f"), alt.Tooltip("alignment:Q", format=".3f")],
        )
        .properties(title=title, height=260)
    )


def token_heatmap(df: pd.DataFrame, *, title: str, x_title: str, y_title: str) -> alt.Chart:
    """Token-level attention weights: rows = attending tokens, columns = attended tokens (in input order)."""
    d = df.copy()
    d["row"] = d["src_pos"].astype(str).str.zfill(3) + " " + d["src_token"]
    d["col"] = d["dst_pos"].astype(str).str.zfill(3) + " " + d["dst_token"]
    return (
        alt.Chart(d)
        .mark_rect()
        .encode(
            x=alt.X("col:N", title=x_title, sort=sorted(d["col"].unique()),
                    axis=alt.Axis(labelExpr="slice(datum.label, 4)", labelAngle=-60, labelOverlap=False)),
            y=alt.Y("row:N", title=y_title, sort=sorted(d["row"].unique()),
                    axis=alt.Axis(labelExpr="slice(datum.label, 4)")),
            color=alt.Color("weight:Q", title="Attention weight", scale=alt.Scale(scheme="viridis")),
            tooltip=[alt.Tooltip("src_token:N", title="from token"), alt.Tooltip("dst_token:N", title="to token"),
                     alt.Tooltip("weight:Q", format=".4f"), alt.Tooltip("exact:N", title="same token id")],
        )
        .properties(title=title, height=alt.Step(16), width=alt.Step(12))
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


def metric_title(metric: str) -> str:
    return metric_label(metric)
