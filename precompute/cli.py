"""Command line of the precompute job, generated from the settings JobConfig declares (:mod:`precompute.config`).

Imports nothing heavy until work starts, so a flag error comes at once; ``--help`` reads the model families' registry
for the --model help, which imports torch (about 2 s) as long as the families do.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from precompute.settings import PROGRAM

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

EPILOG = """\
examples:
  first try on a CPU (minutes):
    python -m precompute --dataset ../shared/data/trec-dl-2020 --model ../shared/models/minilm-l6-msmarco-ce --max-queries 3
  the paper's setting (GPU):
    python -m precompute --dataset dl20 --model castorini/monobert-large-msmarco --device cuda --dtype bfloat16

The store lands in --out (default data/store/<dataset>__<model>), one folder per run; see docs/store.md.
Rerunning the same command resumes an interrupted run and skips finished work.
exit codes: 0 done, 1 unexpected failure (a bug: one line, the traceback saved in <cache>/last-error.txt),
2 bad input (dataset, model, output folder, flags, damaged files, full disk), 130 interrupted.
"""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``error: ...; see --help``) with exit code 2: the usage block,
    22 lines for this CLI, is printed by ``--help`` only. A help given as a callable is read when help is printed."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {message}; see {self.prog} --help\n")

    def format_help(self) -> str:
        for action in self._actions:
            if callable(action.help):
                action.help = action.help()
        return super().format_help()


def build_parser(prog: str = PROGRAM) -> argparse.ArgumentParser:
    """The parser of every setting JobConfig declares (precompute.config): its flag in its group, its help with the
    declared default. Every flag's value is read as text (None when not given) and parsed by its declaration in
    :func:`config_from_args`, so every bad value gets the same kind of one-line error."""
    from precompute.config import ARGUMENT_GROUPS, JobConfig

    p = OneLineParser(
        prog=prog,
        description="Run a cross-encoder over TREC DL query-passage pairs and write per-pair, per-head attention "
        "summaries (25 segment directions + matching signals), scores and nDCG@10 into a Parquet store.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups = {name: p.add_argument_group(name, description() if callable(description) else description)
              for name, description in ARGUMENT_GROUPS.items()}
    for s in JobConfig.settings():
        if s.kind.switch:
            kwargs = {"action": "store_true"}
        else:
            kwargs = {"action": "append" if s.kind.repeat else "store", "metavar": s.metavar or s.kind.metavar}
        groups[s.group].add_argument(s.flag, dest=s.name, default=None, help=_help(s), **kwargs)
    return p


def _help(s):
    """The setting's help with its default (as the flag's text) appended; a callable help stays one, read when --help
    is printed."""
    default = s.default_text()

    def text(help_text: str) -> str:
        help_text = help_text.replace("%", "%%")
        return help_text if default is None or "Default:" in help_text else f"{help_text}. Default: {default}"

    return (lambda: text(s.help())) if callable(s.help) else text(s.help)


def config_from_args(args):
    """The JobConfig of parsed arguments: every given flag parsed by its declaration, then the checks of the settings
    together (:meth:`JobConfig.check`); ValueError (one line naming the flag) for a bad value."""
    from precompute.config import JobConfig

    values = {s.name: s.parse(getattr(args, s.name)) for s in JobConfig.settings() if getattr(args, s.name) is not None}
    cfg = JobConfig(**values)
    cfg.check()
    return cfg


def main(argv: list[str] | None = None, prog: str = PROGRAM) -> int:
    """Run the job of ``argv``; ``prog`` names the command in --help and errors (``atlas precompute`` is the same
    parser under another name)."""
    from precompute.allocator import use_system_pool

    use_system_pool()  # before pyarrow is loaded: Arrow's buffers in malloc, which the job trims between stages
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    from precompute.datasets import DatasetError
    from precompute.console import first_line, log
    from precompute.job import run
    from precompute.families.loading import ModelError
    from precompute.store.writer import StoreError

    from precompute.distributed import RankFailure, World

    if World.from_env().distributed:  # a launcher that ends the job (torchrun after a rank failed) sends SIGTERM
        signal.signal(signal.SIGTERM, _stopped_by_launcher)
    try:
        root = run(cfg)
    except (DatasetError, ModelError, StoreError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RankFailure as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted: finished parts are kept; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # a bug: one line for the user, the traceback kept for the report
        print(f"error: unexpected {type(err).__name__}: {first_line(err)} (a bug; the traceback is in "
              f"{_save_traceback(cfg.cache)}); finished parts are kept, run the same command again to resume",
              file=sys.stderr)
        return EXIT_FAILED
    if World.from_env().leader:
        log(f"store ready: {root}  (open it: duckdb -readonly {root / 'atlas.duckdb'})")
    return EXIT_OK


def _stopped_by_launcher(signum, frame) -> None:
    from precompute.distributed import RankFailure

    raise RankFailure("stopped by the launcher (another rank failed or the job was cancelled); finished parts are "
                      "kept, rerun the same command to resume")


def _save_traceback(cache: Path) -> Path:
    """Write the current exception's traceback to ``<cache>/last-error.txt`` (or the temp folder when the cache
    cannot be written) and return where it went."""
    import tempfile
    import traceback

    text = traceback.format_exc()
    for folder in (Path(cache), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "last-error.txt").write_text(text)
            return folder / "last-error.txt"
        except OSError:
            continue
    return Path("(nowhere: no writable folder)")
