"""matching_atlas: open_run's one-line refusals, what a run holds and lacks, read-only SQL, and an import of the
package that pulls in neither Streamlit nor torch."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

import matching_atlas as ma
from matching_atlas.connection import SqlRefused
from tests.conftest import REPO

V1 = REPO / "tests" / "fixtures" / "store-v1" / "tiny-dl__tiny-bert"
V2 = REPO / "tests" / "fixtures" / "store-v2" / "tiny-dl__tiny-bert"


def test_a_run_that_cannot_be_opened_is_one_line(tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(V2, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    cases = {tmp_path / "nothing": "does not exist", tmp_path: "not a run folder", copy: "not 'complete'"}
    for path, reason in cases.items():
        with pytest.raises(ma.RunError) as err:
            ma.open_run(path, progress=False)
        assert reason in str(err.value) and "\n" not in str(err.value)


def test_analyses_name_what_is_missing_and_the_command_that_adds_it():
    held = ma.open_run(V1, progress=False).analyses().set_index("analysis")
    assert held.loc["summaries", "present"] and held.loc["ablations:directions", "present"]
    missing = held.loc["ablations:heads"]
    assert not missing["present"]
    words = shlex.split(missing["command"])
    assert words[:3] == ["python", "-m", "precompute"] and "heads" in words[words.index("--ablations") + 1]
    assert not isinstance(held.loc["summaries", "command"], str)  # present: no command


def test_sql_is_read_only():
    run = ma.open_run(V2, progress=False)
    assert int(run.sql("SELECT count(*) AS n FROM pairs")["n"].iloc[0]) == len(run.sql("SELECT * FROM pairs"))
    for text in ("DROP VIEW pairs", "SELECT 1; SELECT 2", "COPY pairs TO '/tmp/x.csv'",
                 "SELECT * FROM read_csv('/etc/passwd')"):
        with pytest.raises((SqlRefused, Exception)):
            run.sql(text)


def test_the_package_imports_neither_streamlit_nor_torch():
    code = ("import sys, matching_atlas as ma; r = ma.open_run(sys.argv[1], progress=False); r.table1(); "
            "print(sorted(m for m in ('streamlit', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(V2)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_patching_summaries_are_means_of_the_effects():
    run = ma.open_run(V2, progress=False)
    effects = run.patching("tfc1")
    assert set(effects["experiment"]) == {"tfc1"} and len(effects) < len(run.patching())
    heads = effects[effects["component"] == "head"].groupby(["layer", "head"])["effect"].mean().reset_index()
    got = run.patching_heads("tfc1")
    assert got[["layer", "head"]].values.tolist() == heads[["layer", "head"]].values.tolist()
    np.testing.assert_allclose(got["mean"], heads["effect"], rtol=1e-5)


def test_patching_experiments_count_the_patch_pairs_with_a_null_effect():
    run = ma.open_run(V2, progress=False)
    # the fixture's effects are all defined: a third of them made NULL (the view replaced by one over a copy of it)
    con = run.connection
    con.execute("CREATE TABLE effects_copy AS SELECT * FROM patching_effects")
    con.execute("CREATE OR REPLACE VIEW patching_effects AS SELECT * REPLACE (CASE WHEN (patch_id + layer) % 3 = 0 "
                "THEN NULL ELSE effect END AS effect) FROM effects_copy")
    effects = run.patching()
    assert 0 < effects["effect"].isna().sum() < len(effects)
    pairs = run.connection.execute("SELECT experiment, count(*) FROM patching_pairs GROUP BY 1").fetchall()
    got = run.patching_experiments().set_index("experiment")
    for experiment, n in pairs:
        mine = effects[effects["experiment"] == experiment]
        assert got.loc[experiment, "patch_pairs"] == n
        assert got.loc[experiment, "null_pairs"] == mine.loc[mine["effect"].isna(), "patch_id"].nunique()
