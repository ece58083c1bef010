"""Condition kinds: every id parses into its parts and prints back to the same id, the parts are the store's columns,
legacy ids of old stores still parse, and every bad id is one AblationSpecError line."""

from __future__ import annotations

import pytest

from precompute import conditions as C
from precompute.store.schema import ABLATION_CONDITIONS, ABLATION_SUMMARY

IDS = {  # an id of each kind and shape -> the parts it must parse to (besides condition_id, kind and analysis)
    "none": dict(kind="baseline", condition="none", mode="none", layers="none"),
    "q_d@all/zero": dict(kind="direction", condition="q_d", mode="zero", layers="all", directions=("q_d",)),
    "d_q@3/mask": dict(kind="direction", condition="d_q", mode="mask", layers="3", layer=3, directions=("d_q",)),
    "cross@0-2/mask": dict(kind="group", condition="cross", mode="mask", layers="0-2", directions=("q_d", "d_q")),
    "q_d+d_q@1/zero": dict(kind="group", condition="q_d+d_q", mode="zero", layers="1", layer=1,
                           directions=("q_d", "d_q")),
    "head:3.5/zero": dict(kind="head", condition="head", mode="zero", layers="3", layer=3, head=5),
    "mlp@3:d/mean": dict(kind="component", condition="mlp", mode="mean", layers="3", layer=3, component="mlp",
                         segment="d"),
    "attn@0-2/zero": dict(kind="component", condition="attn", mode="zero", layers="0-2", component="attn"),
    "attn@all:cls/zero": dict(kind="component", condition="attn", mode="zero", layers="all", component="attn",
                              segment="cls"),
    "qk:3.5:k2/remove": dict(kind="subspace", condition="qk", mode="remove", layers="3", layer=3, head=5, k=2,
                             operation="remove", factor=0.0),
    "qk:0.11:k12/scale=0.5": dict(kind="subspace", condition="qk", mode="scale=0.5", layers="0", layer=0, head=11,
                                  k=12, operation="scale=0.5", factor=0.5),
    "qk:3.5:a2/remove": dict(kind="subspace_aligned", condition="qk", mode="remove", layers="3", layer=3, head=5, k=2,
                             operation="remove", factor=0.0),
}
ANALYSIS = {"baseline": None, "direction": "attention", "group": "attention", "layer_sweep": "attention",
            "head": "attention", "component": "components", "subspace": "subspace", "subspace_aligned": "subspace"}


@pytest.mark.parametrize("condition_id", IDS)
def test_an_id_parses_into_its_parts_and_prints_back(condition_id):
    c = C.parse(condition_id)
    assert c.condition_id == condition_id
    want = {**dict.fromkeys(ABLATION_CONDITIONS.column_names), **IDS[condition_id]}
    assert {k: getattr(c, k) for k in want if k not in ("condition_id", "analysis")} == \
        {k: v for k, v in want.items() if k not in ("condition_id", "analysis")}
    assert c.analysis == ANALYSIS[c.kind]
    assert C.parse(c.condition_id, c.kind) == c  # by its own kind's grammar too
    assert C.Condition.from_row(c.row()) == c  # a stored row reads back into the same condition


def test_every_registered_kind_reads_its_example_and_is_documented_in_order():
    assert list(C.REGISTRY) == list(ANALYSIS)  # the order ids parse in and the report prints sections in
    for kind in C.REGISTRY.values():
        c = C.parse(kind.example, kind.name)
        assert c.kind == kind.name and c.condition_id == kind.example and c.analysis == ANALYSIS[kind.name]
    assert [a.name for a in C.analyses()] == ["attention", "components", "subspace"]
    assert C.condition_sets() == ("directions", "groups", "layers", "heads", "components", "subspace", "aligned",
                                  "none")


def test_a_layer_sweep_shares_the_grammar_of_directions_and_groups():
    c = C.parse("cross@2/zero", "layer_sweep")
    assert (c.kind, c.layer, c.directions, c.condition_id) == ("layer_sweep", 2, ("q_d", "d_q"), "cross@2/zero")
    assert C.parse("cross@2/zero").kind == "group"  # without the stored kind, the id names the group's condition
    with pytest.raises(C.AblationSpecError, match="one layer"):
        C.parse("cross@0-2/zero", "layer_sweep")


def test_a_user_group_takes_its_directions_from_the_stored_row():
    assert C.parse("mine@all/zero").directions is None  # the id alone does not say what 'mine' removes
    c = C.Condition.from_row({"condition_id": "mine@all/zero", "kind": "group", "condition": "mine",
                              "directions": "q_d,d_sep1"})
    assert c.directions == ("q_d", "d_sep1") and c.condition_id == "mine@all/zero"


@pytest.mark.parametrize("legacy,documented", [
    ("mlp:d@3/mean", "mlp@3:d/mean"), ("attn:cls@0-2/zero", "attn@0-2:cls/zero"), ("mlp@1/zero", "mlp@1/zero"),
])
def test_legacy_component_ids_of_old_stores_parse_to_the_documented_id(legacy, documented):
    assert C.parse(legacy, "component").condition_id == documented
    assert C.parse(legacy) == C.parse(documented)


@pytest.mark.parametrize("bad,said", [
    ("q_d@all/mean", "mode 'mean'"), ("q_d@3-1/zero", "reversed"), ("q_d@x/zero", "expected all, a layer"),
    ("head:1.2/mask", "mode is zero"), ("mlp@3:x/mean", "unknown segment 'x'"), ("attn@1/mask", "mode 'mask'"),
    ("qk:1.2:k0/remove", "from 1"), ("qk:1.2:k1/bogus", "remove or scale="), ("qk:1.2:k1/scale=nan", "remove or scale="),
    ("foo", "expected none"), ("Q->D@all/zero", "expected none"), ("", "expected none"),
])
def test_a_bad_id_is_one_line(bad, said):
    with pytest.raises(C.AblationSpecError, match=said.replace("(", r"\(")) as err:
        C.parse(bad)
    assert "\n" not in str(err.value)


def test_rows_are_the_columns_of_ablation_conditions_and_summary():
    row = C.parse("qk:3.5:k2/scale=2").row()
    assert list(row) == ABLATION_CONDITIONS.column_names
    assert ABLATION_SUMMARY.column_names[: len(row)] == ABLATION_CONDITIONS.column_names
    assert C.parse("none").row()["analysis"] is None  # the baseline is in no Holm family


def test_the_request_asks_every_kind_in_registry_order_first_kind_keeping_a_shared_id():
    req = C.AblationRequest(sets=("directions", "layers", "heads", "components", "subspace"), layers=("all", "1"),
                            sweep=("q_d",), components=("mlp@0-1:d/zero", "attn@0-2/mean"), subspace_k="1",
                            subspace_ops=("remove",))
    conds = req.conditions(3, 2, subspace_heads=[(1, 1)], head_dim=4)
    kinds = [c.kind for c in conds]
    assert kinds == sorted(kinds, key=list(C.REGISTRY).index)  # baseline, then each kind's, in registry order
    by = {c.condition_id: c for c in conds}
    assert by["q_d@1/zero"].kind == "direction" and by["q_d@2/zero"].kind == "layer_sweep"
    assert by["attn@all/mean"].layers == "all"  # 0-2 of a 3-layer model
    assert {"mlp@0-1:d/zero", "qk:1.1:k1/remove", "head:2.1/zero", "mlp@2:cls/mean"} <= set(by)
    with pytest.raises(C.AblationSpecError, match="layers 0-2"):
        C.AblationRequest(sets=("groups",), components=("mlp@5/zero",)).conditions(3, 2)


def test_a_kind_is_registered_once():
    with pytest.raises(ValueError, match="already"):
        C.register(C.REGISTRY["head"])
