"""The Findings page's own charts: estimates with their intervals, one row per item (every row labelled), and the
no-op check's attention mass beside the value-weighted share by layer."""

from __future__ import annotations

import altair as alt
import pandas as pd

from app.charts import LAYER_AXIS, effect_intervals


def estimates(df: pd.DataFrame, *, title: str, x_title: str, y_title: str) -> alt.Chart:
    """Columns ``item``, ``estimate``, ``low``, ``high``, ``n_queries``: a point and its interval per row, largest
    first, every row labelled (:func:`app.charts.effect_intervals`), the queries in the tooltip."""
    return effect_intervals(df, title=title, x_title=x_title, label="item", value="estimate", low="low", high="high",
                            y_title=y_title, counts={"n_queries": "queries"})


def mass_and_share(df: pd.DataFrame, *, title: str) -> alt.Chart:
    """Rows of :meth:`matching_atlas.Run.noop_targets`: per source (one panel each) and target, the attention mass
    (solid) and the value-weighted share (dashed) by layer."""
    words = {"q": "Query tokens", "d": "Document tokens", "cls": "[CLS]", "sep": "SEP (both separators)"}
    long = pd.concat([df.assign(value=df["mass"], measure="attention mass"),
                      df.assign(value=df["share"], measure="value-weighted share")]).dropna(subset=["value"])
    long = long.assign(source_label=long["source"].map(words), target_label=long["target"].map(words))[
        ["source_label", "target_label", "layer", "measure", "value", "n_queries"]]
    line = alt.Chart().mark_line(point=True).encode(
        x=alt.X("layer:Q", title="Layer", axis=LAYER_AXIS),  # a number line, as every per-layer chart (app.charts)
        y=alt.Y("value:Q", title="Share of the source's attention / output", axis=alt.Axis(format="%")),
        color=alt.Color("target_label:N", title="Target"),
        strokeDash=alt.StrokeDash("measure:N", title=None),
        tooltip=[alt.Tooltip("source_label:N", title="source"), alt.Tooltip("target_label:N", title="target"),
                 alt.Tooltip("layer:Q"), alt.Tooltip("measure:N"), alt.Tooltip("value:Q", format=".1%"),
                 alt.Tooltip("n_queries:Q", title="queries")])
    return (alt.layer(line, data=long).properties(width=280, height=180)
            .facet(column=alt.Column("source_label:N", title=None)).properties(title=title))
