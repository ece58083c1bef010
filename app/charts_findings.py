"""The Findings page's own charts: estimates with their intervals, one row per item (every row labelled), and the
no-op check's attention mass beside the value-weighted share by layer."""

from __future__ import annotations

import altair as alt
import pandas as pd

from app.charts import color_scale


def estimates(df: pd.DataFrame, *, title: str, x_title: str, y_title: str) -> alt.Chart:
    """Columns ``item``, ``estimate``, ``low``, ``high``, ``n_queries``: a point and its interval per row, largest
    first, every row labelled (one 18 px step per row), around a zero line."""
    d = df[["item", "estimate", "low", "high", "n_queries"]].copy()
    d["item"] = d["item"].astype(str)
    order = list(d.sort_values("estimate", ascending=False)["item"])
    tips = [alt.Tooltip("item:N", title=y_title), alt.Tooltip("estimate:Q", format="+.4f"),
            alt.Tooltip("low:Q", title="95% CI low", format="+.4f"),
            alt.Tooltip("high:Q", title="95% CI high", format="+.4f"), alt.Tooltip("n_queries:Q", title="queries")]
    y = alt.Y("item:N", sort=order, title=y_title, axis=alt.Axis(labelOverlap=False))
    base = alt.Chart(d).encode(y=y, tooltip=tips)
    rule = base.mark_rule(strokeWidth=2, color="#555555").encode(x=alt.X("low:Q", title=x_title), x2="high:Q")
    point = base.mark_point(filled=True, size=60).encode(
        x=alt.X("estimate:Q", title=x_title),
        color=alt.Color("estimate:Q", title=x_title, scale=color_scale(d["estimate"], diverging=True)))
    zero = alt.Chart(pd.DataFrame({"x": [0.0]})).mark_rule(color="gray", strokeDash=[4, 4]).encode(
        x=alt.X("x:Q", title=x_title))
    return alt.layer(zero, rule, point).properties(title=title, height=alt.Step(18))


def mass_and_share(df: pd.DataFrame, *, title: str) -> alt.Chart:
    """Rows of :meth:`matching_atlas.Run.noop_targets`: per source (one panel each) and target, the attention mass
    (solid) and the value-weighted share (dashed) by layer."""
    words = {"q": "Query tokens", "d": "Document tokens", "cls": "[CLS]", "sep": "SEP (both separators)"}
    long = pd.concat([df.assign(value=df["mass"], measure="attention mass"),
                      df.assign(value=df["share"], measure="value-weighted share")]).dropna(subset=["value"])
    long = long.assign(source_label=long["source"].map(words), target_label=long["target"].map(words))[
        ["source_label", "target_label", "layer", "measure", "value", "n_queries"]]
    line = alt.Chart().mark_line(point=True).encode(
        x=alt.X("layer:O", title="Layer", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("value:Q", title="Share of the source's attention / output", axis=alt.Axis(format="%")),
        color=alt.Color("target_label:N", title="Target"),
        strokeDash=alt.StrokeDash("measure:N", title=None),
        tooltip=[alt.Tooltip("source_label:N", title="source"), alt.Tooltip("target_label:N", title="target"),
                 alt.Tooltip("layer:O"), alt.Tooltip("measure:N"), alt.Tooltip("value:Q", format=".1%"),
                 alt.Tooltip("n_queries:Q", title="queries")])
    return (alt.layer(line, data=long).properties(width=280, height=180)
            .facet(column=alt.Column("source_label:N", title=None)).properties(title=title))
