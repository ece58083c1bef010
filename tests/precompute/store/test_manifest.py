"""manifest.json is read against its declared types and bounds: a value the store schema cannot hold (an absurd
head count, a negative count, a string where a number goes) is refused in one line naming the field, by the job
and by the app alike (the app's side: tests/app/test_verification.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from precompute.cli import main
from precompute.store import manifest as manifest_module
from precompute.store.manifest import ManifestError, parse_manifest, read_manifest
from precompute.store.schema import TABLES
from tests.precompute.store.test_old_stores import RUN as V1_RUN
from tests.precompute.store.test_integrity import args_of


def edited(**changes) -> str:
    """The version-1 fixture's manifest with ``changes`` ("model.heads" -> value) applied, as JSON."""
    data = json.loads((V1_RUN / "manifest.json").read_text())
    for dotted, value in changes.items():
        *sections, key = dotted.split(".")
        target = data
        for section in sections:
            target = target[section]
        target[key] = value
    return json.dumps(data)


@pytest.mark.parametrize("field, value, said", [
    ("model.heads", 30_000_000, "model.heads is 30000000, expected an integer from 1 to 128"),
    ("model.layers", 0, "model.layers is 0, expected an integer from 1 to 128"),
    ("model.layers", "12", 'model.layers is "12", expected an integer from 1 to 128'),
    ("model.layers", True, "model.layers is true, expected an integer"),
    ("model.layers", 12.5, "model.layers is 12.5, expected an integer"),
    ("counts.pairs", -1, "counts.pairs is -1, expected an integer from 0 to 2147483647"),
    ("counts.neg_type", {"easy": -6}, "counts.neg_type.easy is -6, expected an integer of at least 0"),
    ("tables.pairs", {"rows": -30}, "tables.pairs.rows is -30, expected an integer of at least 0"),
    ("status", 5, "status is 5, expected a string"),
    ("ablations.conditions", "none", "ablations.conditions is a string, expected a list"),
    ("ablations.conditions", [1], "ablations.conditions[0] is 1, expected a string"),
    ("model.segment_labels", {"q": ["Query"]}, "model.segment_labels.q is a list, expected a string"),
    ("identity.batch_size", 0, "identity.batch_size is 0, expected an integer of at least 1"),
    ("model", [], "section model is a list, expected an object"),
])
def test_a_value_the_schema_does_not_allow_is_refused(field, value, said):
    with pytest.raises(ManifestError) as err:
        parse_manifest(edited(**{field: value}), source="run/manifest.json")
    assert str(err.value).startswith("run/manifest.json ") and said in str(err.value) and "\n" not in str(err.value)


def test_values_inside_the_bounds_read_as_before():
    manifest = parse_manifest(edited(**{"model.heads": 128, "counts.pairs": 0, "identity.max_queries": None}))
    assert manifest.model.heads == 128 and manifest.counts.pairs == 0 and manifest.identity.max_queries is None
    assert read_manifest(V1_RUN).to_dict() == parse_manifest((V1_RUN / "manifest.json").read_text()).to_dict()


def test_the_bounds_are_what_the_store_columns_hold():
    """Layers and heads are int8 columns (0 to 127: 128 of each), pair ids int32."""
    for table, column, bound in (("head_attention", "layer", manifest_module.MAX_LAYERS),
                                 ("head_attention", "head", manifest_module.MAX_HEADS),
                                 ("pairs", "pair_id", manifest_module.MAX_PAIRS + 1)):
        kind = next(c.type for c in TABLES[table].columns if c.name == column)
        assert np.iinfo(kind.to_pandas_dtype()).max + 1 == bound, (table, column)


def test_a_manifest_larger_than_any_the_job_writes_is_refused_unread(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "manifest.json", "w") as out:
        out.truncate(manifest_module.MAX_MANIFEST_BYTES + 1)  # sparse: no 64 MB written
    with pytest.raises(ManifestError, match="more than a manifest can be"):
        read_manifest(run)


def test_the_job_refuses_an_absurd_manifest_in_one_line(small_runs, tmp_path, capsys):
    config, fresh, _ = small_runs
    root = tmp_path / "run"
    shutil.copytree(fresh, root)
    data = json.loads((root / "manifest.json").read_text())
    data["model"]["heads"] = 30_000_000
    (root / "manifest.json").write_text(json.dumps(data))
    capsys.readouterr()
    assert main(args_of(config(root))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.heads is 30000000, expected an integer from 1 to 128" in err[0], err
