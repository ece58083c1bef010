"""Compare runs by relative depth: per-layer profiles of a head-level result and their alignment into depth bins.

The rule (layer ``l`` of ``L`` at depth ``(l + 0.5) / L``, the deeper model binned into the shallower one's
layers) is :mod:`precompute.depth`'s, shared with ``python -m precompute.report --compare``. A bin's value is the
mean over its layers of each layer's value (a layer's value: the mean, or the largest, over its heads of the
head-level value). No Streamlit here.
"""

from __future__ import annotations

import pandas as pd

from precompute.depth import depth_bin, relative_depth


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
