"""Compare two runs layer by layer: per-layer profiles of a head-level result, aligned by relative depth (a 6-layer
MiniLM and a 24-layer MonoBERT-large only compare that way) or by layer index.

The depth rule (layer ``l`` of ``L`` at depth ``(l + 0.5) / L``, the deeper model binned into the shallower one's
layers) is :mod:`precompute.depth`'s. A layer's value is the mean (or the largest) over its heads of the head-level
value; a bin's value is the mean of its layers' values. The app's Compare runs page and ``python -m precompute.report
RUN --compare OTHER`` both compute their tables here (:meth:`CompareTables.compare`, or the page's own slices through
:func:`layer_profile` and :func:`align_by_depth`).
"""

from __future__ import annotations

import pandas as pd

from matching_atlas.reading import Reader
from matching_atlas.slice import Slice
from precompute.depth import depth_bin, relative_depth

ALIGNMENTS = ("depth", "layer")


def _span(layers: list[int]) -> str:
    layers = sorted(int(x) for x in layers)
    if not layers:
        return "-"
    return str(layers[0]) if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"


def layer_profile(grid: pd.DataFrame, value: str, layers: int, how: str = "mean") -> pd.DataFrame:
    """Per layer of a head-level result (columns ``layer``, ``head``, ``value``): the mean (or max) over its heads,
    the heads counted, and the layer's relative depth. Layers whose every head is NULL keep a NaN value."""
    if how not in ("mean", "max"):
        raise ValueError(f"how must be 'mean' or 'max', not {how!r}")
    g = grid.groupby("layer")[value]
    out = pd.DataFrame({"value": g.mean() if how == "mean" else g.max(), "heads": g.count()}).reset_index()
    out["layer"] = out["layer"].astype("int64")
    out["layers"] = int(layers)
    out["depth"] = [relative_depth(l, layers) for l in out["layer"]]
    return out[["layer", "layers", "depth", "value", "heads"]]


def align_by_depth(a: pd.DataFrame, layers_a: int, b: pd.DataFrame, layers_b: int) -> pd.DataFrame:
    """Two layer profiles (``layer_profile``) binned into the shallower model's layers: one row per bin with each
    run's layers in it, their mean value, and ``diff`` = B - A."""
    bins = min(int(layers_a), int(layers_b))
    rows = []
    for k in range(bins):
        row = {"bin": k, "depth_lo": k / bins, "depth_hi": (k + 1) / bins}
        for tag, prof, n in (("a", a, layers_a), ("b", b, layers_b)):
            members = [l for l in range(int(n)) if depth_bin(l, n, bins) == k]
            vals = prof[prof["layer"].isin(members)]["value"]
            row[f"layers_{tag}"] = _span(members)
            row[f"value_{tag}"] = float(vals.mean()) if vals.notna().any() else float("nan")
        row["diff"] = row["value_b"] - row["value_a"]
        rows.append(row)
    return pd.DataFrame(rows, columns=["bin", "depth_lo", "depth_hi", "layers_a", "value_a", "layers_b", "value_b",
                                       "diff"])


def align_by_layer(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Two layer profiles (``layer_profile``) side by side by layer index: one row per layer of either run with each
    run's value (NaN where the run lacks the layer) and ``diff`` = B - A."""
    out = a[["layer", "value"]].merge(b[["layer", "value"]], on="layer", how="outer", suffixes=("_a", "_b"))
    out["diff"] = out["value_b"] - out["value_a"]
    out["layer"] = out["layer"].astype("int64")
    return out.sort_values("layer").reset_index(drop=True)[["layer", "value_a", "value_b", "diff"]]


class CompareTables(Reader):
    """The method of :class:`matching_atlas.Run` that compares it with another run."""

    @property
    def layers(self) -> int:
        """The model's number of layers (the manifest's; counted from head_attention_agg when it records none)."""
        layers = self.info.model.layers
        return int(layers) if isinstance(layers, int) else int(self.shape()["layers"].iloc[0])

    def layer_profile(self, metric: str = "q_d", how: str = "mean", where: Slice | None = None) -> pd.DataFrame:
        """Per layer: the mean (or largest) over its heads of ``metric``'s mean over the (slice's) pairs
        (:func:`layer_profile` of :meth:`~matching_atlas.heads.HeadTables.head_means`)."""
        return layer_profile(self.head_means(metric, where), "mean", self.layers, how)

    def compare(self, other: "CompareTables", metric: str = "q_d", align: str = "depth", neg_type: str | None = None,
                how: str = "mean") -> pd.DataFrame:
        """This run (A) against ``other`` (B) on one summary metric: each layer's value is the mean (``how='max'``:
        the largest) over its heads of the metric's mean over the run's pairs (or those of one negative type),
        aligned by relative depth (:func:`align_by_depth`: one row per depth bin) or by layer index
        (:func:`align_by_layer`), with ``diff`` = B - A."""
        if align not in ALIGNMENTS:
            raise ValueError(f"align must be one of {', '.join(ALIGNMENTS)}, not {align!r}")
        where = Slice(neg_types=(neg_type,)) if neg_type else None
        a, b = self.layer_profile(metric, how, where), other.layer_profile(metric, how, where)
        return align_by_depth(a, self.layers, b, other.layers) if align == "depth" else align_by_layer(a, b)
