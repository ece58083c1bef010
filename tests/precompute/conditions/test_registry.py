"""Adding a condition kind is one registered object: a toy kind registered through ``precompute.conditions.register``
only (no other file touched) is asked for by ``--ablations``, listed by ``--help`` and docs/store.md, computed by the
job with the existing kernel mechanisms, tested in its own Holm family and printed by the report."""

from __future__ import annotations

import re

import numpy as np
import pytest

from precompute import conditions as C
from precompute.conditions.kinds import Analysis, ConditionKind
from tests.precompute.analyses.test_ablations import run_job, sensitive_model

TOYS = Analysis("toys", "toy conditions")


class LayerHeads(ConditionKind):
    """Every head of one layer zeroed at once: what the 'heads' set does one head at a time, a layer at a time."""

    name = "toy_layer_heads"
    analysis = TOYS
    title = "Toy: every head of one layer zeroed"
    description = "every head of one layer zeroed at once"
    condition_set = "toys"
    set_help = "every head of a layer zeroed, one condition per layer"
    grammar = "heads@<layer>/zero"
    example = "heads@1/zero"
    reserved = ("heads",)

    def parse(self, text, groups=None):
        m = re.fullmatch(r"heads@(\d+)/zero", text)
        return None if m is None else C.Condition(self.name, "heads", "zero", m.group(1), int(m.group(1)))

    def format(self, c) -> str:
        return f"heads@{c.layer}/zero"

    def conditions(self, request, model):
        if self.condition_set not in request.asked_sets():
            return []
        return [self.parse(f"heads@{layer}/zero") for layer in range(model.n_layers)]

    def apply(self, c, row, edits) -> None:
        for head in range(edits.n_heads):
            edits.remove_head(row, c.layer, head)


@pytest.fixture
def toy():
    kind = C.register(LayerHeads())
    yield kind
    del C.REGISTRY[kind.name]


def test_the_toy_kind_is_in_the_parser_and_its_help(toy, capsys):
    from precompute.cli import build_parser, main

    text = build_parser().format_help()
    assert "toys (every head of a layer zeroed, one condition per layer)" in " ".join(text.split())
    assert "heads@<layer>/zero" in text and "heads@1/zero" in text
    C.AblationRequest(sets=("toys",)).check()  # the set is known to --ablations
    with pytest.raises(SystemExit) as exit_:
        main(["--dataset", "x", "--model", "y", "--ablations", "toys,bogus"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "unknown set 'bogus'" in err[0] and "toys" in err[0]
    with pytest.raises(C.AblationSpecError, match="reserved"):  # its ids' word is no group name any more
        C.AblationRequest(groups=("heads=q_d",)).check()


def test_the_toy_kind_is_in_the_store_docs(toy):
    from precompute.store import docs

    assert "| `toy_layer_heads` | `heads@<layer>/zero` | `heads@1/zero` | toys | toys |" in docs.render()


def test_the_toy_kind_applies_through_the_existing_head_masks(toy, tmp_path):
    """Zeroing every head of layer 1 equals removing all 25 directions at layer 1 in zero mode (every post-softmax
    weight 0, so every head outputs 0): two mechanisms, one result."""
    from precompute.analyses import ablations
    from precompute.families.loading import load
    from precompute.pairs import Pair
    from tests.tiny_models import DOCS, QUERIES

    lm = load(str(sensitive_model("bert", tmp_path / "model")), device="cpu")
    pairs = [Pair(i, f"q{i}", f"d{i}", QUERIES[i], DOCS[i], 1, "relevant") for i in range(len(QUERIES))]
    toy_c, all_c, none = C.parse("heads@1/zero"), C.parse("all@1/zero"), C.parse("none")
    assert toy_c.kind == toy.name and toy_c.analysis == "toys"
    got = ablations.score_conditions(lm, pairs, [none, toy_c, all_c], batch_size=8, max_length=64, kernel="eager")
    np.testing.assert_allclose(got["heads@1/zero"], got["all@1/zero"], atol=1e-5)
    assert np.abs(got["heads@1/zero"] - got["none"]).max() > 1e-4


def test_the_job_computes_the_toy_kind_in_its_own_holm_family_and_the_report_prints_it(toy, tiny_dataset, tmp_path,
                                                                                         capsys):
    from precompute import report
    from precompute.store.connect import connect

    model = sensitive_model("bert", tmp_path / "model")
    _, root = run_job(tiny_dataset, model, tmp_path / "run", ablations=("toys",), max_queries=2)
    rows = connect(root).execute("SELECT condition_id, kind, analysis, layer, p, p_holm FROM ablation_summary "
                                 "ORDER BY condition_id").fetchall()
    assert [r[:4] for r in rows] == [("heads@0/zero", toy.name, "toys", 0), ("heads@1/zero", toy.name, "toys", 1),
                                     ("heads@2/zero", toy.name, "toys", 2), ("none", "baseline", None, None)]
    assert report.main([str(root)]) == 0
    out = capsys.readouterr().out
    tested = sum(r[5] is not None for r in rows)
    assert f"Holm-corrected across the run's {tested} tested conditions;" in out  # one analysis: the toys
    assert "Toy: every head of one layer zeroed (3)" in out
    assert all(re.search(rf"^heads@{layer}/zero\s+\d\.\d{{4}}\s+[+-]\d\.\d{{4}}", out, re.M) for layer in range(3))
