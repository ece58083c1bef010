"""Install several tables as one atomic step: stage them, write a journal, rename, drop what they replace.

Why: a stage that rewrites several tables (the summary tables; ablation_scores, _conditions, _metrics and
_summary, which must always describe the same conditions) cannot rename them all at once. A process killed
between two renames would leave a folder whose tables disagree forever. So a stage

1. writes every new table to ``_staged/<table>.parquet`` (beside the old ones, which stay in use);
2. writes the journal ``_staged/commit.json`` (atomically): the commit point;
3. renames each staged table into place, drops the parts the tables were merged from, deletes the journal.

A rerun first calls :func:`recover`: with a journal, it finishes step 3 (roll forward; every step is
idempotent); without one, the staged files are an unfinished step 1 and are deleted (roll back: the old
tables and the parts are untouched, the stage merges again).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from precompute import crash
from precompute.store import layout

STAGED = "_staged"
JOURNAL = "commit.json"


def staged_path(root: Path, table: str) -> Path:
    """The staged copy of ``table``: a file, or a partition folder (:mod:`precompute.store.layout`)."""
    return layout.path(Path(root) / STAGED, table)


def commit(root: Path, label: str, tables: Sequence[str], drop_parts: Sequence[str],
           drop: Callable[[str], None]) -> None:
    """Install the staged ``tables`` and drop the parts of ``drop_parts`` as one step. ``label`` (the stage) names
    the crash points ``<label>.staged``, ``.committed``, ``.installing`` and ``.installed``: a stage that commits
    declares them in :data:`precompute.crash.POINTS` (and tests/precompute/test_crash.py kills the job there)."""
    root = Path(root)
    missing = [t for t in tables if not staged_path(root, t).exists()]
    if missing:
        raise FileNotFoundError(f"commit {label}: {', '.join(missing)} not staged")
    crash.point(f"{label}.staged")
    journal = root / STAGED / JOURNAL
    tmp = journal.with_name(f".{JOURNAL}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"stage": label, "install": list(tables), "drop_parts": list(drop_parts)}))
    _fsync(tmp)
    os.replace(tmp, journal)
    crash.point(f"{label}.committed")
    _roll_forward(root, json.loads(journal.read_text()), drop)


def recover(root: Path, drop: Callable[[str], None], verify: Callable[[str, Path], None],
            log: Callable[[str], None]) -> None:
    """Finish a commit a killed job left (journal present) or discard an unfinished one (no journal)."""
    root = Path(root)
    folder = root / STAGED
    if not folder.is_dir():
        return
    journal = folder / JOURNAL
    if journal.exists():
        try:
            entry = json.loads(journal.read_text())
            tables = [str(t) for t in entry["install"]]
        except (OSError, ValueError, KeyError, TypeError):
            entry = None
        if entry is not None:
            for table in tables:
                if staged_path(root, table).exists():
                    verify(table, staged_path(root, table))
            log(f"finishing the {entry.get('stage', '?')} commit an interrupted job left: {', '.join(tables)}")
            _roll_forward(root, entry, drop)
            return
    log(f"discarding tables an interrupted job staged but did not commit ({', '.join(sorted(p.name for p in folder.iterdir()))})")
    shutil.rmtree(folder)


def _roll_forward(root: Path, entry: dict, drop: Callable[[str], None]) -> None:
    label = entry.get("stage", "?")
    for table in entry["install"]:
        staged = staged_path(root, table)
        if staged.exists():  # absent: installed before the job was killed
            _install(staged, layout.path(root, table))
            crash.point(f"{label}.installing")
        layout.remove_superseded(root, table)
    crash.point(f"{label}.installed")
    for table in entry.get("drop_parts", ()):
        drop(table)
    (root / STAGED / JOURNAL).unlink(missing_ok=True)
    shutil.rmtree(root / STAGED, ignore_errors=True)


def _install(staged: Path, target: Path) -> None:
    """Rename a staged file or partition folder into place. A folder cannot be renamed over a non-empty one: the old
    folder is deleted first, which is safe after the journal (a rerun deletes what is left of it and renames)."""
    if staged.is_dir() and target.exists():
        layout.remove(target)
    os.replace(staged, target)


def _fsync(path: Path) -> None:
    """The journal must reach the disk before any table is renamed: the renames are only safe after it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
