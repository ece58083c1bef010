"""Finding runs, deciding which ones the app opens (damaged runs named with their file), and the commands it prints."""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
from pathlib import Path

import pytest

from app.commands import (ABLATION_SCORINGS_PER_S, ABLATIONS_FLAGS, DEFAULT_CONDITIONS, FIRST_TRY_TIME, FULL_PAIRS,
                          PATCHING_FLAGS, PRECOMPUTE_COMMAND, SUMMARY_PAIRS_PER_S, SWEEP_FLAGS, command_for,
                          full_run_minutes)
from app.runs import DEFAULT_STORE, REPO, model_folder, run_labels, store_from_args
from matching_atlas.opening import find_runs, inspect_run
from precompute.store.schema import READABLE_SCHEMA_VERSIONS
from precompute.config import JobConfig
from precompute.store.schema import SCHEMA_VERSION
from tests.app.conftest import DL19, DL20, SMALL


def copy_run(store: Path, tmp_path: Path, name: str = DL20) -> Path:
    run = tmp_path / name
    shutil.copytree(store / name, run)
    return run


def truncate(file: Path, keep: int = 200) -> None:
    file.write_bytes(file.read_bytes()[:keep])


def test_find_runs(store):
    runs = find_runs(store)
    assert [r.name for r in runs] == sorted([DL19, DL20, SMALL])
    assert all(r.ok for r in runs), [r.problem for r in runs]
    full = next(r for r in runs if r.name == DL20)
    assert full.has("svd") and full.has("ablation_summary") and full.dataset_name == "trec-dl-2020"
    small = next(r for r in runs if r.name == SMALL)
    assert not small.has("svd") and small.model.layers == 2


def test_readable_versions_are_the_schemas():
    assert SCHEMA_VERSION in READABLE_SCHEMA_VERSIONS


def test_a_schema_version_1_store_still_opens(store, tmp_path):
    """Version 1 had no svd.kv_head (a later column): such a run opens, the same file in a current run does not."""
    import pyarrow.parquet as pq

    from precompute.store import integrity

    run = copy_run(store, tmp_path)
    svd = run / "svd.parquet"
    integrity.write(pq.read_table(svd).drop_columns(["kv_head"]), svd, table="svd",
                    identity=integrity.stored_identity(svd), row_group_size=1000)
    man = json.loads((run / "manifest.json").read_text())
    man["schema_version"] = 1
    (run / "manifest.json").write_text(json.dumps(man))
    assert 1 in READABLE_SCHEMA_VERSIONS and inspect_run(run).ok
    if SCHEMA_VERSION != 1:
        man["schema_version"] = SCHEMA_VERSION
        (run / "manifest.json").write_text(json.dumps(man))
        assert "lacks the column(s) kv_head" in inspect_run(run).problem


def test_refusals(bad_store, tmp_path):
    runs = {r.name: r for r in find_runs(bad_store)}
    old = runs["trec-dl-2020__old-ce"]
    assert not old.ok and f"schema version {SCHEMA_VERSION + 1}" in old.problem
    assert "'running'" in runs["trec-dl-2019__busy-ce"].problem
    assert find_runs(tmp_path / "missing") == []


def test_corrupt_manifest_is_named(store, tmp_path):
    run = copy_run(store, tmp_path)
    (run / "manifest.json").write_text("{not json")
    info = inspect_run(run)
    assert not info.ok and str(run / "manifest.json") in info.problem and "not valid JSON" in info.problem
    assert "\n" not in info.problem
    (run / "manifest.json").write_text("[1, 2]")
    assert "expected an object" in inspect_run(run).problem
    (run / "manifest.json").unlink()
    assert "manifest.json is missing" in inspect_run(run).problem


def test_missing_required_table(store, tmp_path):
    run = copy_run(store, tmp_path)
    (run / "head_attention.parquet").unlink()
    assert "lacks the table(s) head_attention" in inspect_run(run).problem


@pytest.mark.parametrize("table", ["pairs", "head_attention_agg", "svd", "ablation_summary"])
def test_truncated_table_makes_the_run_damaged(store, tmp_path, table):
    """Required (pairs, head_attention_agg) or optional (svd, ablation_summary): the file is named, the run refused."""
    run = copy_run(store, tmp_path)
    assert inspect_run(run).ok
    truncate(run / f"{table}.parquet")
    info = inspect_run(run)
    assert not info.ok and f"{run / table}.parquet is damaged" in info.problem and "\n" not in info.problem


def test_replaced_table_with_other_row_count(store, tmp_path):
    import pyarrow.parquet as pq

    run = copy_run(store, tmp_path)
    t = pq.read_table(run / "svd.parquet")
    pq.write_table(t.slice(0, 5), run / "svd.parquet")
    assert "has 5 rows, the manifest recorded" in inspect_run(run).problem


def test_table_without_a_schema_column(store, tmp_path):
    import pyarrow.parquet as pq

    run = copy_run(store, tmp_path)
    path = run / "head_contrasts.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["p_holm"]), path)
    assert "head_contrasts.parquet lacks the column(s) p_holm" in inspect_run(run).problem


def test_a_damaged_run_leaves_the_others_usable(store, tmp_path):
    for name in (DL20, DL19):
        copy_run(store, tmp_path, name)
    truncate(tmp_path / DL19 / "svd.parquet")
    runs = {r.name: r for r in find_runs(tmp_path)}
    assert runs[DL20].ok and not runs[DL19].ok


def test_token_changes_when_a_file_is_rewritten(store, tmp_path):
    run = copy_run(store, tmp_path)
    before = inspect_run(run).token
    (run / "manifest.json").write_text((run / "manifest.json").read_text() + "\n")
    after = inspect_run(run).token
    assert after != before
    shutil.copy(run / "svd.parquet", run / "svd.tmp")
    (run / "svd.tmp").replace(run / "svd.parquet")
    assert inspect_run(run).token != after


def test_store_from_args(tmp_path, monkeypatch):
    assert store_from_args(["--store", "/x/y"], {}) == Path("/x/y")
    assert store_from_args([], {"ATLAS_STORE": "/from/env"}) == Path("/from/env")
    assert store_from_args(["--store", "/x"], {"ATLAS_STORE": "/env"}) == Path("/x")
    monkeypatch.chdir(tmp_path)
    assert store_from_args([], {}) == REPO / DEFAULT_STORE  # no data/store here: the repository's
    (tmp_path / "data" / "store").mkdir(parents=True)
    assert store_from_args([], {}) == DEFAULT_STORE


def test_a_run_folder_as_the_store(store):
    """--store RUNFOLDER lists that run alone (it used to say the store held no run)."""
    runs = find_runs(store_from_args(["--store", str(store / DL20)], {}))
    assert [r.name for r in runs] == [DL20] and runs[0].ok


def test_runs_with_one_label_get_distinct_labels(store, tmp_path):
    copy_run(store, tmp_path)
    shutil.copytree(store / DL20, tmp_path / f"{DL20}-all")
    runs = find_runs(tmp_path)
    labels = run_labels(runs)
    assert len(set(labels.values())) == 2 and all(r.name in labels[r.name] for r in runs)
    assert run_labels(find_runs(store))[DL19] == "trec-dl-2019 x tiny-ce"  # unique labels stay short


def test_command_and_model_folder(store):
    run = inspect_run(store / DL20)
    cmd = command_for(run, SWEEP_FLAGS)
    assert cmd.startswith("python -m precompute --dataset ../shared/data/trec-dl-2020 --model ")
    assert cmd.endswith(f"--ablations directions,groups,layers,heads --out {run.path}"), cmd
    assert "--ablations directions,groups --out" in command_for(run, ABLATIONS_FLAGS)  # what the page asks, even a default
    assert "--ablations" not in command_for(run)
    folder, why = model_folder(run)
    assert folder is None and "not a folder on this machine" in why


def test_command_repeats_the_identifying_settings(store, tmp_path):
    """A manifest of an older version (no recorded settings): the command is written from its identity."""
    run = copy_run(store, tmp_path)
    man = json.loads((run / "manifest.json").read_text())
    man["identity"] = {"max_queries": 3, "seed": 0, "easy_negatives": 5, "dtype": "auto", "max_length": 512,
                       "depth": 100, "candidates": None}
    (run / "manifest.json").write_text(json.dumps(man))
    cmd = command_for(inspect_run(run))
    assert "--max-queries 3" in cmd and "--easy-negatives 5" in cmd
    assert "--seed" not in cmd and "--dtype" not in cmd and "--depth" not in cmd  # the job's defaults, no candidates
    defaults = {f.name: f.default for f in dataclasses.fields(JobConfig)}
    assert defaults["easy_negatives"] != 5 and defaults["max_queries"] != 3  # so the flags above are not defaults


def _parsed(cmd: str) -> JobConfig:
    """What the job reads from a printed command (its flags parsed and checked as the CLI does; nothing run)."""
    from precompute.cli import build_parser, config_from_args

    words = shlex.split(cmd)
    assert words[:3] == ["python", "-m", "precompute"], cmd
    return config_from_args(build_parser().parse_args(words[3:]))


def test_an_older_manifests_template_and_answer_tokens_are_in_the_command(store, tmp_path):
    """The command guessed flags from identity keys: --template does not exist (KeyError 'template'), and answer
    tokens printed as a Python list."""
    run = copy_run(store, tmp_path)
    man = json.loads((run / "manifest.json").read_text())
    man["identity"].update(template="Query: {query} Document: {document} it's relevant?", answer_tokens=[" yes", "no"])
    (run / "manifest.json").write_text(json.dumps(man))
    cmd = command_for(inspect_run(run))
    assert "--answer-tokens ' yes,no'" in cmd and "[" not in cmd, cmd
    cfg = _parsed(cmd)
    assert cfg.prompt_template == man["identity"]["template"] and cfg.answer_tokens == (" yes", "no")
    assert cfg.out == run and cfg.easy_negatives == man["identity"]["easy_negatives"]


def test_a_running_runs_command_asks_for_what_its_job_asked(store, tmp_path):
    """A run still being built shows the command of the job building it, every requested analysis included (it
    showed one without --ablations and --patching: following it computed something else)."""
    from precompute.settings import to_record

    run = copy_run(store, tmp_path)
    man = json.loads((run / "manifest.json").read_text())
    asked = JobConfig(dataset="../shared/data/trec-dl-2020", model=man["model"]["id"], easy_negatives=2,
                      ablations=("components", "subspace"), subspace_heads="0.1,1.0", subspace_k="1,3",
                      subspace_ops=("scale=0.5",), component_mode="zero", patching=("cls",), patching_pairs=3,
                      measures=("nDCG@10", "RR@10"), prompt_template="Query: {query} it's $HOME `x` {document}",
                      answer_tokens=("yes", "no"), progress=False, out=Path("elsewhere"))
    man["status"] = "running"
    man["invocations"] = [{"started": "2026-01-01T00:00:00+00:00", "status": "running", "settings": to_record(asked)}]
    (run / "manifest.json").write_text(json.dumps(man))
    cmd = command_for(inspect_run(run), PATCHING_FLAGS)
    for flag in ("--ablations components,subspace", "--subspace-heads 0.1,1.0", "--component-mode zero",
                 "--patching tfc1,cls", "--patching-pairs 3", "--measures nDCG@10,RR@10", "--no-progress"):
        assert flag in cmd, (flag, cmd)
    parsed = _parsed(cmd)
    want = dataclasses.replace(asked, out=run, patching=("tfc1", "cls"))  # --out is the run folder; the page's change
    assert parsed == want


def test_full_run_estimate_comes_from_the_measured_throughputs():
    from precompute.conditions import AblationRequest

    summary, ablation = full_run_minutes()
    assert DEFAULT_CONDITIONS == len(AblationRequest().conditions(n_layers=24, n_heads=16)) == 32
    assert summary == pytest.approx(FULL_PAIRS / SUMMARY_PAIRS_PER_S / 60)
    assert ablation == pytest.approx(FULL_PAIRS * 32 / ABLATION_SCORINGS_PER_S / 60)
    assert 55 < summary + ablation < 120  # the ablation pass dominates: one to two hours, not 10-15 minutes


def test_readme_first_try_is_the_welcome_command():
    readme = REPO / "README.md"
    if not readme.exists():
        pytest.skip("no README.md")
    assert PRECOMPUTE_COMMAND in readme.read_text() and FIRST_TRY_TIME in readme.read_text()


# (family, flags beyond the common ones): no family has both a template and a pooling position with QK subspaces
# (MonoT5 has no pooling position for the cls experiment; rotary decoders have no subspace interventions), so the
# template and answer tokens ride with tfc1 on MonoT5 and the cls experiment runs on a BERT.
RESUMED = {
    "template": ("monot5", ["--prompt-template", "@template.txt", "--answer-tokens", "true,false", "--patching", "tfc1"]),
    "cls": ("bert", ["--patching", "cls", "--patching-pairs", "2"]),
}


@pytest.mark.parametrize("case", RESUMED)
def test_the_printed_commands_resume_the_run(case, tmp_path, monkeypatch, capsys):
    """A run made with --ablations components,subspace and --patching (with --prompt-template @FILE --answer-tokens,
    or the cls experiment), interrupted before its ablations: the app's command (split as a shell would) resumes it
    with the same identity and finishes every requested analysis; once finished, the app's and the report's commands
    are the same, and running it computes nothing and keeps the identity."""
    from precompute import report
    from precompute.cli import main
    from precompute.stages import STAGES
    from precompute.store.manifest import read_manifest
    from tests.precompute.conftest import make_dataset
    from tests.tiny_families import build_family
    from tests.tiny_models import build

    family, flags = RESUMED[case]
    monkeypatch.chdir(tmp_path)
    dataset = make_dataset(tmp_path / "data", n_queries=2)
    model = (build_family if family != "bert" else build)(family, tmp_path / "model", layers=1)  # fewer conditions
    (tmp_path / "template.txt").write_text("Query: {query} Document: {document} it's relevant? $HOME\n")
    argv = ["--dataset", str(dataset), "--model", str(model), "--out", "runs/a run", "--cache", "cache",
            "--easy-negatives", "2", "--max-length", "128", "--batch-size", "8", "--chunk-size", "16", "--no-progress",
            "--ablations", "components,subspace", "--component-mode", "zero", "--subspace-heads", "top:1",
            "--subspace-k", "1", "--subspace-ops", "remove", *flags]

    def interrupted(ctx):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(STAGES["ablations"], "run", interrupted)
        assert main(argv) == 130
    (tmp_path / "template.txt").unlink()  # the command carries the template's text, not the file's name
    folder = tmp_path / "runs" / "a run"
    before = read_manifest(folder)
    assert before.status == "running"

    def execute(command: str) -> int:
        words = shlex.split(command)
        assert words[:3] == ["python", "-m", "precompute"], command
        return main(words[3:])

    resume = command_for(inspect_run(folder))
    assert "--ablations components,subspace" in resume and " ".join(flags[-2:]) in resume, resume
    assert resume.endswith("--out 'runs/a run'") and "[" not in resume, resume
    if case == "template":
        assert before.identity.template.endswith("$HOME") and before.identity.answer_tokens == ["true", "false"]
        assert "--answer-tokens true,false" in resume
    assert execute(resume) == 0
    after = read_manifest(folder)
    assert after.complete and after.identity == before.identity and len(after.invocations) == 2
    assert {"component", "subspace"} <= set(after.ablations.counts), after.ablations.counts
    assert after.patching.experiments == [flags[flags.index("--patching") + 1]]

    capsys.readouterr()
    assert report.main(["runs/a run"]) == 0
    printed = capsys.readouterr().out.rstrip("\n").rsplit("\n", 1)[-1].strip()
    assert printed == command_for(inspect_run(folder))
    assert execute(printed) == 0
    last = read_manifest(folder)
    assert last.identity == before.identity and len(last.invocations) == 3
    assert last.invocations[-1].computed and not any(last.invocations[-1].computed.values()), last.invocations[-1]
