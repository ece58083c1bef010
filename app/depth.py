"""Aligning two models of different depths (a 6-layer MiniLM and a 24-layer MonoBERT-large) by relative depth.

Layer ``l`` of an ``L``-layer model sits at relative depth ``(l + 0.5) / L``: the middle of its share of the
network (0 = input, 1 = output), so the first and last layers of every model are placed symmetrically. To compare
two models layer by layer, the deeper model's layers are binned into the shallower model's ``K`` layers: layer ``l``
goes to bin ``floor((l + 0.5) * K / L)`` (computed in integers: ``((2l + 1) K) // (2L)``), the shallower layer whose
span ``[k / K, (k + 1) / K)`` holds its middle. The shallower model's layer ``k`` is bin ``k`` itself; a 24-layer
model's layers 0-3 go to bin 0 of a 6-layer model, 4-7 to bin 1, and so on. A bin's value is the mean over its
layers of each layer's value (a layer's value: the mean, or the largest, over its heads of the head-level value).
No Streamlit here.
"""

from __future__ import annotations

import pandas as pd


def relative_depth(layer: int, layers: int) -> float:
    """``(layer + 0.5) / layers``."""
    return (int(layer) + 0.5) / int(layers)


def depth_bin(layer: int, layers: int, bins: int) -> int:
    """The bin (0..bins-1) of ``layer`` of a ``layers``-layer model among ``bins`` equal depth bins."""
    return min(int(bins) - 1, ((2 * int(layer) + 1) * int(bins)) // (2 * int(layers)))


def layers_in_span(lo: int, hi: int, layers_from: int, layers_to: int) -> tuple[int, int] | None:
    """The layers of a ``layers_to``-layer model whose middle lies in the depth span ``[lo / L, (hi + 1) / L)`` of
    layers ``lo``..``hi`` of an ``L = layers_from``-layer model (the slice's layer range carried over by depth); the
    nearest layer when no middle lies inside (a narrow span of a deeper model)."""
    inside = [l for l in range(int(layers_to))
              if int(lo) * 2 * layers_to <= (2 * l + 1) * layers_from < (int(hi) + 1) * 2 * layers_to]
    if inside:
        return inside[0], inside[-1]
    if layers_to < 1:
        return None
    mid = (int(lo) + int(hi) + 1) / 2 / layers_from  # no middle inside a narrow span: the nearest layer
    near = min(range(int(layers_to)), key=lambda l: abs(relative_depth(l, layers_to) - mid))
    return near, near


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
