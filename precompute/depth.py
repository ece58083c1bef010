"""Aligning two models of different depths (a 6-layer MiniLM and a 24-layer MonoBERT-large) by relative depth.

Layer ``l`` of an ``L``-layer model sits at relative depth ``(l + 0.5) / L``: the middle of its share of the
network (0 = input, 1 = output), so the first and last layers of every model are placed symmetrically. To compare
two models layer by layer, the deeper model's layers are binned into the shallower model's ``K`` layers: layer ``l``
goes to bin ``floor((l + 0.5) * K / L)`` (computed in integers: ``((2l + 1) K) // (2L)``), the shallower layer whose
span ``[k / K, (k + 1) / K)`` holds its middle. The shallower model's layer ``k`` is bin ``k`` itself; a 24-layer
model's layers 0-3 go to bin 0 of a 6-layer model, 4-7 to bin 1, and so on. The app's Compare runs page and
``python -m precompute.report RUN --compare OTHER`` both align this way. Imports nothing.
"""

from __future__ import annotations


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
