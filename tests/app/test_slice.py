"""The slice: normalised (equal filters hash equally), described, clamped to another model."""

from __future__ import annotations

from app.slice import Slice, neg_order


def test_normalised_and_hashable():
    s = Slice(layers=(3, 1), heads=(4, 2, 2), neg_types=("hard", "relevant"), grades=(3, 0), qids=("b", "a"))
    assert s.layers == (1, 3) and s.heads == (2, 4) and s.qids == ("a", "b") and s.grades == (0, 3)
    assert hash(Slice(heads=(1, 2))) == hash(Slice(heads=(2, 1)))


def test_clamp_to_another_model():
    assert Slice(layers=(2, 30), heads=(0, 11, 40)).clamp(layers=12, heads=12) == Slice(layers=(2, 11), heads=(0, 11))
    assert Slice(layers=(0, 5)).clamp(layers=6, heads=1).layers is None  # the full range is no filter
    assert Slice(layers=(7, 9)).clamp(layers=6, heads=1).layers is None  # nothing left: no filter


def test_describe_and_derived():
    s = Slice(layers=(0, 1), heads=(3,), qids=("q",))
    assert "layers 0-1" in s.describe() and "1 query" in s.describe()
    assert s.pairs_only() == Slice(qids=("q",))
    assert s.with_(heads=()).heads == ()


def test_negative_types_in_the_project_order():
    assert neg_order(["easy", "zzz", "relevant", "hard"]) == ["relevant", "hard", "easy", "zzz"]
