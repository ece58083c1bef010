"""Finding runs and deciding which ones the app opens."""

from __future__ import annotations

import json
from pathlib import Path

from app.store import (DEFAULT_STORE, PRECOMPUTE_COMMAND, REPO, command_for, find_runs, inspect_run, model_folder,
                       store_from_args)
from precompute.store.schema import SCHEMA_VERSION
from tests.app.conftest import DL19, DL20, SMALL


def test_find_runs(store):
    runs = find_runs(store)
    assert [r.name for r in runs] == sorted([DL19, DL20, SMALL])
    assert all(r.ok for r in runs)
    full = next(r for r in runs if r.name == DL20)
    assert full.has("svd") and full.has("ablation_summary") and full.dataset_name == "trec-dl-2020"
    small = next(r for r in runs if r.name == SMALL)
    assert not small.has("svd") and small.model["layers"] == 2


def test_refusals(bad_store, tmp_path):
    runs = {r.name: r for r in find_runs(bad_store)}
    old = runs["trec-dl-2020__old-ce"]
    assert not old.ok and f"schema version {SCHEMA_VERSION + 1}" in old.problem
    assert "'running'" in runs["trec-dl-2019__busy-ce"].problem
    broken = tmp_path / "x__broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    assert "cannot be read" in inspect_run(broken).problem
    (broken / "manifest.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION, "status": "complete"}))
    assert "lacks the table" in inspect_run(broken).problem
    assert find_runs(tmp_path / "missing") == []


def test_token_changes_when_the_manifest_is_rewritten(store, tmp_path):
    import shutil

    run = tmp_path / DL20
    shutil.copytree(store / DL20, run)
    before = inspect_run(run).token
    (run / "manifest.json").write_text((run / "manifest.json").read_text() + "\n")
    assert inspect_run(run).token != before


def test_store_from_args(tmp_path, monkeypatch):
    assert store_from_args(["--store", "/x/y"], {}) == Path("/x/y")
    assert store_from_args([], {"ATLAS_STORE": "/from/env"}) == Path("/from/env")
    assert store_from_args(["--store", "/x"], {"ATLAS_STORE": "/env"}) == Path("/x")
    monkeypatch.chdir(tmp_path)
    assert store_from_args([], {}) == REPO / DEFAULT_STORE  # no data/store here: the repository's
    (tmp_path / "data" / "store").mkdir(parents=True)
    assert store_from_args([], {}) == DEFAULT_STORE


def test_command_and_model_folder(store):
    run = inspect_run(store / DL20)
    cmd = command_for(run, "--ablations directions,groups")
    assert cmd.startswith("python -m precompute --dataset ../shared/data/trec-dl-2020 --model ")
    assert f"--out {run.path}" in cmd and cmd.endswith("--ablations directions,groups")
    folder, why = model_folder(run)
    assert folder is None and "not a folder on this machine" in why


def test_command_repeats_the_identifying_settings(store, tmp_path):
    import shutil

    run = tmp_path / DL20
    shutil.copytree(store / DL20, run)
    man = json.loads((run / "manifest.json").read_text())
    man["identity"] = {"max_queries": 3, "seed": 0, "easy_negatives": 5, "dtype": "auto", "max_length": 512}
    (run / "manifest.json").write_text(json.dumps(man))
    cmd = command_for(inspect_run(run))
    assert "--max-queries 3" in cmd and "--easy-negatives 5" in cmd and "--seed" not in cmd and "--dtype" not in cmd


def test_readme_first_try_is_the_welcome_command():
    readme = REPO / "README.md"
    if not readme.exists():
        import pytest

        pytest.skip("no README.md")
    assert PRECOMPUTE_COMMAND in readme.read_text()
