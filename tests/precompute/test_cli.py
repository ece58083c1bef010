"""The command line generated from the settings JobConfig declares: every malformed value of every flag is one line
and exit 2, --help prints the declared defaults and vocabularies, and every setting survives the round trips through
its flag and through the manifest (what the rerun command and a rebuild from the manifest rely on)."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import pytest

from precompute import settings as S
from precompute.cli import build_parser, config_from_args, main
from precompute.config import JobConfig, rerun_command

SETTINGS = JobConfig.settings()


def malformed_argv(s: S.Setting) -> list[list[str]]:
    """Every malformed use of ``s``'s flag its declaration gives (plus the flag without its value)."""
    if s.kind.switch:
        return [[f"{s.flag}=yes"]]
    return [[s.flag, text] for text in s.kind.malformed] + [[s.flag]]


def test_every_setting_declares_a_malformed_value():
    for s in SETTINGS:
        assert s.kind.switch or s.kind.malformed, f"{s.flag} declares no malformed value"


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.flag)
def test_every_malformed_value_of_every_flag_is_one_line_and_exit_2(setting, capsys):
    """Generated from the declarations: each malformed value alone on the command line is refused before any work,
    in one line naming the flag, with exit code 2 (no traceback, no argparse usage block)."""
    for argv in malformed_argv(setting):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith("error: ") and "usage:" not in err, (argv, err)
        assert setting.flag in err, (argv, err)


def test_subspace_ops_bogus_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--ablations", "subspace", "--subspace-ops", "bogus"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: --subspace-ops 'bogus'") and err.count("\n") == 1


def test_help_is_generated_from_the_declarations():
    """Every flag in its group with its declared default; --model names every family of the registry, --ablations
    every condition set."""
    from precompute.conditions import condition_sets
    from precompute.families import FAMILIES

    parser = build_parser()
    parser.format_help()  # reads the helps given as callables
    helps = {a.dest: a.help for a in parser._actions}
    for s in SETTINGS:
        default = s.default_text()
        assert default is None or helps[s.name].endswith(f"Default: {default}") or "Default: " in helps[s.name], s.flag
    assert "Default: 20" in helps["easy_negatives"] and "Default: directions,groups" in helps["ablations"]
    groups = {g.title: [a.dest for a in g._group_actions] for g in parser._action_groups}
    assert all(s.name in groups[s.group] for s in SETTINGS)
    assert all(f.name in helps["model"] for f in FAMILIES), helps["model"]
    assert all(name in helps["ablations"] for name in condition_sets()), helps["ablations"]


def test_no_flag_given_is_the_default_config():
    assert config_from_args(build_parser().parse_args([])) == JobConfig()


def _everything_changed(tmp_path: Path) -> JobConfig:
    """A config in which every setting differs from its default (the test checks that it does)."""
    cfg = JobConfig(
        dataset="../data/a b", model="models/it's", revision="v 1", base_model="../base model", trust_remote_code=True,
        easy_negatives=3, seed=7, candidates="run:bm25", depth=50,
        max_queries=2, prompt_template="Query: {query} $HOME `x` \"{document}\" it's", answer_tokens=(" yes", "no"),
        max_length=128, batch_size=4, batch_tokens=4096, device="cpu", dtype="float32",
        ablations=("directions", "layers", "heads", "components", "subspace"), ablation_modes=("zero", "mask"),
        ablation_layers=("all", "0-1"), ablation_groups=("x=Q->D", "q_d,d_q"), ablation_sweep=("q_d",),
        ablation_heads=("0.1", "1.*"), ablation_stack=2, ablation_kernel="eager", ablation_components=("mlp@1:d/mean",),
        component_mode="zero", subspace_heads="0.1,1.0", subspace_k="1,3", subspace_ops=("scale=0.5",),
        measures=("nDCG@10", "RR@10"), eval_scopes=("pairs", "run"), contrasts=("q_d:d_q", "cross:all"),
        patching=("tfc1", "cls"), patching_pairs=3,
        patching_method="exact", patching_top=4, patching_score="probability", patching_min_delta=0.125,
        patching_graddrop=True,
        out=tmp_path / "run", store=tmp_path / "store", cache=tmp_path / "cache", chunk_size=8, progress=False,
    )
    default = JobConfig()
    assert [s.flag for s in SETTINGS if getattr(cfg, s.name) == getattr(default, s.name)] == []
    return cfg


def test_the_rerun_command_gives_back_every_setting(tmp_path):
    """Every setting that differs from its default is in the command, shell-quoted, and the job reads back the
    same config from it (--out being the run folder); --store is not needed beside --out."""
    cfg = _everything_changed(tmp_path)
    cmd = rerun_command(S.values_of(cfg), tmp_path / "the run")
    words = shlex.split(cmd)
    assert words[:3] == ["python", "-m", "precompute"] and words[-2:] == ["--out", str(tmp_path / "the run")]
    assert "--answer-tokens" in words and words[words.index("--answer-tokens") + 1] == " yes,no"
    assert words.count("--ablation-group") == 2 and "--store" not in words
    back = config_from_args(build_parser().parse_args(words[3:]))
    assert back == dataclasses.replace(cfg, out=tmp_path / "the run", store=JobConfig().store)


def test_the_defaults_are_left_out_but_the_dataset_and_the_model(tmp_path):
    assert rerun_command(S.values_of(JobConfig()), "data/store/x") == (
        "python -m precompute --dataset dl20 --model castorini/monobert-large-msmarco --out data/store/x")
    values = S.values_of(JobConfig(depth=50))
    assert "--depth" not in rerun_command(values, "x")  # depth means nothing without --candidates


def test_every_setting_round_trips_through_the_manifests_record(tmp_path):
    import json

    cfg = _everything_changed(tmp_path)
    record = json.loads(json.dumps(S.to_record(cfg)))
    assert set(record) == {s.name for s in SETTINGS}
    assert S.from_record(JobConfig, record) == cfg
    with pytest.raises(S.SettingError, match="--batch-size 0 as recorded"):
        S.from_record(JobConfig, {**record, "batch_size": 0})
    with pytest.raises(S.SettingError, match="'bogus'"):
        S.from_record(JobConfig, {**record, "bogus": 1})


def test_a_template_file_is_recorded_as_its_text(tmp_path):
    """The rerun command passes the text: it works where the file is gone; a recorded text starting with @ is never
    read as a file name."""
    template = tmp_path / "template.txt"
    template.write_text("Query: {query}\nDocument: {document}\nRelevant:\n")
    cfg = config_from_args(build_parser().parse_args(["--prompt-template", f"@{template}"]))
    assert cfg.prompt_template == "Query: {query}\nDocument: {document}\nRelevant:"
    assert S.to_record(cfg)["prompt_template"] == cfg.prompt_template
    template.unlink()
    words = shlex.split(rerun_command(S.values_of(cfg), "x"))
    assert words[words.index("--prompt-template") + 1] == cfg.prompt_template
    assert S.from_record(JobConfig, {"prompt_template": "@/etc/hostname"}).prompt_template == "@/etc/hostname"


def test_the_ablation_request_is_built_from_the_declarations():
    """Every AblationRequest field is fed by exactly one declared setting, whose default is the request's."""
    from precompute.conditions import AblationRequest

    fed = {s.request: s for s in SETTINGS if s.request}
    assert sorted(fed) == sorted(f.name for f in dataclasses.fields(AblationRequest))
    assert AblationRequest.from_config(JobConfig()) == AblationRequest()
    cfg = JobConfig(subspace_ops=("remove",), ablation_components=("mlp@1/zero",), component_mode="zero")
    request = AblationRequest.from_config(cfg)
    assert (request.subspace_ops, request.components, request.component_mode) == (("remove",), ("mlp@1/zero",), "zero")


def test_the_identity_is_generated_from_the_declarations():
    """One identity key per setting declared part of it, under the key manifests have always used (template for
    --prompt-template: every Parquet file of a run records the identity with those keys)."""
    from precompute.store.manifest import Identity

    keys = [f.name for f in dataclasses.fields(Identity) if f.name != "extra"]
    assert keys == [S.identity_key(s) for s in SETTINGS if s.identity]
    assert set(keys) == {"model", "revision", "base_model", "dataset", "dtype", "easy_negatives", "seed", "candidates", "depth", "max_queries",
                         "max_length", "batch_size", "batch_tokens", "chunk_size", "template", "answer_tokens"}
    old = Identity.from_dict({"template": "Q: {query} D: {document}", "answer_tokens": ["yes", "no"], "depth": 100,
                              "candidates": None, "max_queries": 3})
    assert S.from_identity(JobConfig, old.to_dict()) == {"prompt_template": "Q: {query} D: {document}",
                                                         "answer_tokens": ("yes", "no"), "depth": 100, "max_queries": 3}


def test_the_readmes_flag_table_names_declared_flags_only():
    """README's table of the flags used most: each flag it names exists (a renamed flag fails here)."""
    import re

    from tests.conftest import REPO

    readme = REPO / "README.md"
    if not readme.exists():
        pytest.skip("no README.md")
    text = readme.read_text()
    table = text[text.index("| flag | what |"):].split("\n\n", 1)[0]
    named = set(re.findall(r"`(--[a-z][a-z-]*)", table))
    assert named and named <= {s.flag for s in SETTINGS}, named - {s.flag for s in SETTINGS}


@pytest.mark.parametrize("low", [1e-6, 0.0, -2.0, 3])
def test_every_bounded_kind_offers_a_malformed_value_below_its_bound(low):
    """The malformed-value test above draws its examples from each kind: a bound of 0 or less must still give one."""
    from precompute import settings as S

    kind = S.number(low) if isinstance(low, float) else S.integer(low)
    below = kind.malformed[-1]
    assert float(below) < low
    with pytest.raises(ValueError, match="at least"):
        kind.parse(below)
