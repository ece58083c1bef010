"""The ``atlas`` command: its subcommands, the job's own parser under ``atlas precompute``, and ``atlas app``'s
``streamlit run`` line on the installed app. (A fresh-venv install and the real-data commands: bench/package.sh.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import app
from matching_atlas import app_server
from matching_atlas.cli import COMMANDS, main


def test_atlas_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name}" in out for name in ("precompute", "report", "app", "publish")) and set(COMMANDS) == {
        "precompute", "report", "app", "publish"}


@pytest.mark.parametrize("argv, message", [([], "usage: atlas COMMAND"), (["run"], "unknown command 'run'")])
def test_no_or_an_unknown_subcommand_is_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_atlas_precompute_is_the_jobs_parser(capsys):
    with pytest.raises(SystemExit) as done:
        main(["precompute", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: atlas precompute") and "--candidates SOURCE" in out and "--revision REV" in out
    with pytest.raises(SystemExit) as done:
        main(["precompute", "--depth", "0"])
    assert done.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_atlas_app_runs_the_installed_apps_main_on_the_store(tmp_path, capsys):
    line = app_server.command(tmp_path, ["--server.port", "8599"])
    assert line[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert Path(line[4]) == Path(app.__file__).parent / "main.py" and (Path(line[4]).parent / ".streamlit").is_dir()
    assert line[5:] == ["--server.port", "8599", "--", "--store", str(tmp_path)]
    assert main(["app", "--store", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --store ") and "is not a folder" in err and "\n" not in err
