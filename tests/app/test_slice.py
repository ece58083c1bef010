"""The slice and its URL round trip."""

from __future__ import annotations

from app.slice import Slice


def test_round_trip_through_params():
    s = Slice(layers=(3, 1), heads=(4, 2, 2), neg_types=("hard", "relevant"), grades=(3, 0), qids=("b", "a"))
    assert s.layers == (1, 3) and s.heads == (2, 4) and s.qids == ("a", "b")
    params = s.to_params()
    assert params == {"layers": "1-3", "heads": "2,4", "neg": "hard,relevant", "grades": "0,3", "q": "a,b"}
    assert Slice.from_params(params) == s
    assert Slice().to_params() == {} and Slice.from_params({}) == Slice()


def test_equal_slices_hash_equally():
    assert hash(Slice(heads=(1, 2))) == hash(Slice(heads=(2, 1)))


def test_malformed_params_are_ignored():
    s = Slice.from_params({"layers": "x-2", "heads": "1,a,3", "grades": "-1,zz", "q": ",,"})
    assert s == Slice(heads=(1, 3), grades=(-1,))


def test_clamp_to_a_run():
    s = Slice(layers=(2, 30), heads=(0, 11, 40), neg_types=("easy", "weird"), qids=("1", "2"))
    c = s.clamp(layers=12, heads=12, neg_types=["easy", "hard"], qids=["2"])
    assert c == Slice(layers=(2, 11), heads=(0, 11), neg_types=("easy",), qids=("2",))
    assert Slice(layers=(0, 5)).clamp(layers=6, heads=1).layers is None  # the full range is no filter


def test_describe_and_derived():
    s = Slice(layers=(0, 1), heads=(3,), qids=("q",))
    assert "layers 0-1" in s.describe() and "1 query" in s.describe()
    assert s.pairs_only() == Slice(qids=("q",))
    assert s.with_(heads=()).heads == ()
