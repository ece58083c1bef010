"""The ``atlas`` command (installed with the package): one entry point for the job, the report, the app and
publishing, each the same program as its ``python -m`` form.

* ``atlas precompute ...``: ``python -m precompute`` (the same parser, generated from the settings JobConfig declares);
* ``atlas report RUN ...``: ``python -m precompute.report`` (RUN may be ``hf://datasets/USER/NAME``);
* ``atlas app [--store DIR]``: ``streamlit run`` of the app's main.py, wherever the package is installed, on a store
  (or a run, ``hf://datasets/USER/NAME`` included);
* ``atlas publish RUN --repo USER/NAME``: a run as a Hugging Face dataset repository (:mod:`matching_atlas.hub`).

Imports nothing heavy: ``atlas --help`` answers at once, and each subcommand imports what it runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

EXIT_OK, EXIT_BAD_INPUT = 0, 2
PROGRAM = "atlas"


@dataclass(frozen=True)
class Command:
    summary: str
    run: Callable[[list[str]], int]


def _precompute(argv: list[str]) -> int:
    from precompute.cli import main

    return main(argv, prog=f"{PROGRAM} precompute")


def _report(argv: list[str]) -> int:
    from precompute.report.cli import main

    try:
        argv = _local_runs(argv)
    except Exception as err:  # matching_atlas.hub.HubError: the run on the Hub cannot be fetched or verified
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return main(argv)


def _local_runs(argv: list[str]) -> list[str]:
    """``hf://datasets/...`` arguments as verified local copies (matching_atlas.hub.fetch); the rest as given."""
    if not any(a.startswith("hf://") for a in argv):
        return argv
    from matching_atlas.hub import local_run

    return [local_run(a) for a in argv]


def _app(argv: list[str]) -> int:
    from matching_atlas.app_server import main

    return main(argv, prog=f"{PROGRAM} app")


def _publish(argv: list[str]) -> int:
    from matching_atlas.hub import main

    return main(argv, prog=f"{PROGRAM} publish")


COMMANDS: dict[str, Command] = {
    "precompute": Command("run the job: a reranker over TREC DL pairs into a run folder (flags: atlas precompute "
                          "--help)", _precompute),
    "report": Command("print a finished run's tables (Table 1, patching) and the command that reruns it", _report),
    "app": Command("open the explorer (Streamlit) on a store or a run folder", _app),
    "publish": Command("upload a finished run as a Hugging Face dataset repository with a dataset card", _publish),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROGRAM} COMMAND [ARGS...]", "",
             "Matching Atlas: how a reranker decides that a passage matches a query.", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    lines += ["", f"`{PROGRAM} COMMAND --help` explains a command's arguments."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        (sys.stdout if argv else sys.stderr).write(usage())
        return EXIT_OK if argv else EXIT_BAD_INPUT
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; expected one of {', '.join(COMMANDS)}; see {PROGRAM} --help",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    return COMMANDS[name].run(rest)


if __name__ == "__main__":
    raise SystemExit(main())
