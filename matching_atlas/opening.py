"""Whether a run folder can be opened: the one rule the app, ``python -m precompute.report`` and notebooks apply.

A run is opened only when everything a reader relies on holds, so that a damaged or foreign run is named with a
one-line reason (naming the file) and never read:

* ``manifest.json`` reads through ``precompute.store.manifest`` (the only reader of it), whose types and bounds it
  meets (no absurd layer or head count reaches a page or a notebook);
* its ``schema_version`` is one this checkout reads and its ``status`` is ``complete``;
* the required tables are present;
* every table present, required or optional, passes the footer checks of ``precompute.store.integrity``: a
  readable footer naming its table, the row count the job wrote and the manifest recorded, (for a run of the
  current schema version) the schema's columns and types, and, when the run's files record the run identity,
  the manifest's identity (a table copied from another run is refused);
* every table file was read whole and passed the job's checks (page CRCs, statistics, value bounds) in its
  present state: :mod:`matching_atlas.verification` does this once per file state and caches the outcome. A run
  whose files are not verified yet is verified right away when it is small (``$ATLAS_VERIFY_AT_LISTING_MB``, 256 MB
  of unverified files by default), else when it is opened, with progress, before any of its data is read.

An unreadable optional table makes the run damaged too: opening a run binds a view to every table file, and a
file the job did not finish writing this way means the folder was changed after the job (a copy cut short, a full
disk), so the fix is the same for all: delete the file and rerun the job, which recomputes what is missing.

:func:`inspect_run` says what the rule makes of one folder (a :class:`RunInfo`, listed by the app even when it
cannot be opened); :func:`matching_atlas.open_run` applies it and raises :class:`RunError` with the reason.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from matching_atlas import verification
from matching_atlas.verification import FileCheck
from precompute.store import integrity, schema
from precompute.store.manifest import MANIFEST, DatasetInfo, Manifest, ManifestError, ModelInfo, read_manifest

# Tables a run must have to be opened; the others are optional (pages and methods explain their absence).
REQUIRED_TABLES: tuple[str, ...] = ("pairs", "head_attention", "head_attention_agg")
# Unverified bytes of a run that listing it verifies at once; a larger run is verified when it is opened.
EAGER_ENV = "ATLAS_VERIFY_AT_LISTING_MB"


class RunError(Exception):
    """A run folder that cannot be opened; the message is one line saying why (and what to do)."""


@dataclass(frozen=True)
class RunInfo:
    """One run folder and what the opening rule makes of it. ``name`` (the folder's name) identifies it in a store."""

    path: Path
    manifest: Manifest | None
    problem: str | None
    tables: frozenset[str]
    token: str  # changes whenever a file of the run is rewritten: part of every cache key
    checks: tuple[FileCheck, ...] = ()  # its table files and what each must be
    unverified: tuple[FileCheck, ...] = ()  # those not yet read whole in their present state

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def ok(self) -> bool:
        """No problem known: the footer checks passed and no file failed verification (some may be unverified)."""
        return self.problem is None

    @property
    def verified(self) -> bool:
        """Every table file was read whole and passed: the run's data may be shown."""
        return self.ok and not self.unverified

    @property
    def key(self) -> str:
        """Cache key of the run: its resolved path and its version token."""
        return f"{self.path}|{self.token}"

    def has(self, table: str) -> bool:
        return table in self.tables

    @property
    def model(self) -> ModelInfo:
        return self.manifest.model if self.manifest else ModelInfo()

    @property
    def dataset(self) -> DatasetInfo:
        return self.manifest.dataset if self.manifest else DatasetInfo()

    @property
    def model_name(self) -> str:
        return str(self.model.name or self.name.partition("__")[2] or "?")

    @property
    def dataset_name(self) -> str:
        return str(self.dataset.name or self.name.partition("__")[0] or "?")

    @property
    def label(self) -> str:
        return f"{self.dataset_name} x {self.model_name}"


def is_run_folder(path: Path) -> bool:
    """A folder the job wrote into: it has a manifest or Parquet tables (an unreadable folder counts, so that
    ``inspect_run`` says why it cannot be opened)."""
    try:
        return path.is_dir() and ((path / MANIFEST).exists() or any(path.glob("*.parquet")))
    except OSError:
        return True


def find_runs(root: Path) -> list[RunInfo]:
    """The runs of a store root (its run folders, sorted by name), or ``[root]`` itself when it is a run folder."""
    root = Path(root)
    if is_run_folder(root):
        return [inspect_run(root)]
    try:
        children = sorted(root.iterdir())
    except OSError:  # missing, not a folder, or unreadable: the welcome page says which
        return []
    return [inspect_run(child) for child in children if not child.name.startswith((".", "_")) and is_run_folder(child)]


def _files(path: Path) -> list[Path]:
    return [path / MANIFEST] + [path / f"{name}.parquet" for name in schema.TABLES]


def eager_bytes(environ: dict[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    return int(float(environ.get(EAGER_ENV, "256")) * 2**20)


def inspect_run(path: Path, *, verify_below: int | None = None) -> RunInfo:
    """Decide whether one run folder can be opened (see the module doc). The footer checks are cached per state
    of its files; a run with fewer than ``verify_below`` bytes (default: ``eager_bytes()``) of unverified files is
    verified now."""
    path = Path(path).resolve()
    signature = []
    for f in _files(path):
        try:
            st = f.stat()
        except OSError:
            continue
        signature.append(f"{f.name}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_size}")
    info = _inspect(path, "|".join(signature))
    info = with_verification(info)
    limit = eager_bytes() if verify_below is None else verify_below
    if info.unverified and sum(c.size() for c in info.unverified) <= limit:
        verification.start(info.key, info.unverified).finished.wait()
        info = with_verification(info)
    return info


def with_verification(info: RunInfo) -> RunInfo:
    """``info`` with what the verification cache knows of its files: the first failure as its problem, the files
    not verified yet as ``unverified``."""
    if info.problem is not None:
        return info
    unverified = []
    for check in info.checks:
        done, problem = verification.known(check)
        if done and problem:
            return dataclasses.replace(info, problem=problem, unverified=())
        if not done:
            unverified.append(check)
    return dataclasses.replace(info, unverified=tuple(unverified))


def verify_now(info: RunInfo, show: Callable[[RunInfo, verification.Verification | None], None] | None = None
               ) -> RunInfo:
    """``info`` once every file of it is verified, or with the problem found. Verifying runs in the background
    (:func:`matching_atlas.verification.start`: a second caller joins it); ``show(info, job)`` is called every 0.25 s
    while it runs (a progress bar: ``job.rows_done`` of ``job.rows_total``) and ``show(info, None)`` once it ends."""
    for _ in range(3):  # a file replaced after it was verified is verified again in its new state
        if info.verified or not info.ok:
            return info
        job = verification.start(info.key, info.unverified)
        while not job.finished.wait(0.25):
            if show is not None:
                show(info, job)
        if show is not None:
            show(info, None)
        again = inspect_run(info.path)
        if job.problem and again.ok and not again.verified:  # not cached: a file changed meanwhile, or a check broke
            return dataclasses.replace(again, problem=job.problem)
        info = again
    if info.ok and not info.verified:
        return dataclasses.replace(info, problem=f"the files of {info.path} keep changing while they are verified: "
                                                 "open it again once the job writing them has finished")
    return info


def openable(path: Path | str, show: Callable[[RunInfo, verification.Verification | None], None] | None = None
             ) -> RunInfo:
    """The verified :class:`RunInfo` of the run folder at ``path`` (see :func:`verify_now` for ``show``); RunError
    with the one-line reason when the rule refuses it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise RunError(f"{path} does not exist: pass a run folder written by python -m precompute (its --out)")
    if not is_run_folder(path):
        raise RunError(f"{path} is not a run folder (no manifest.json and no table): pass a folder written by "
                       "python -m precompute (its --out)")
    info = verify_now(inspect_run(path), show)
    if not info.ok:
        raise RunError(info.problem)
    return info


@functools.lru_cache(maxsize=256)
def _inspect(path: Path, token: str) -> RunInfo:
    tables = frozenset(name for name in schema.TABLES if (path / f"{name}.parquet").exists())
    try:
        manifest = read_manifest(path)
    except ManifestError as err:
        return RunInfo(path, None, str(err), tables, token)
    problem = _problem(path, manifest, tables)
    if problem:
        return RunInfo(path, manifest, problem, tables, token)
    checks, problem = _footers(path, manifest, tables)
    return RunInfo(path, manifest, problem, tables, token, checks)


def _problem(path: Path, manifest: Manifest | None, tables: frozenset[str]) -> str | None:
    if manifest is None:
        return f"{path / MANIFEST} is missing: the precompute job has not finished this run"
    if manifest.schema_version not in schema.READABLE_SCHEMA_VERSIONS:
        *older, newest = map(str, schema.READABLE_SCHEMA_VERSIONS)
        readable = f"versions {', '.join(older)} and {newest}" if older else f"version {newest}"
        return (f"this run was written with store schema version {manifest.schema_version}, this checkout reads "
                f"{readable}: rebuild it with this checkout's precompute job (or open it with a matching version)")
    if not manifest.complete:
        return (f"the run's status is {manifest.status!r}, not 'complete': the precompute job is still running "
                "or was interrupted (rerun the same command: it resumes)")
    missing = [t for t in REQUIRED_TABLES if t not in tables]
    if missing:
        return f"the run lacks the table(s) {', '.join(missing)} ({path})"
    return None


def _footers(path: Path, manifest: Manifest, tables: frozenset[str]) -> tuple[tuple[FileCheck, ...], str | None]:
    """Every table file's footer checked (see the module doc): the files and what each must be, and the first
    problem. The run identity is required of every file once one of them records it."""
    current = manifest.schema_version == schema.SCHEMA_VERSION  # older versions may lack later columns
    files = {name: path / f"{name}.parquet" for name in sorted(tables)}
    stamped = any(_recorded_identity(f) is not None for f in files.values())
    identity = manifest.identity.to_dict() if stamped else None
    checks = []
    for name, file in files.items():
        recorded = manifest.tables.get(name)
        check = FileCheck(file, name, current, getattr(recorded, "rows", None), identity)
        try:
            md = integrity.check_footer(file, name, schema.TABLES[name].schema if current else None,
                                        rows=check.rows, identity=identity)
        except integrity.CorruptFile as err:
            return (), f"{err}: delete it and rerun the job's command to rebuild it"
        checks.append(dataclasses.replace(check, footer_rows=md.num_rows))
    return tuple(checks), None


def _recorded_identity(file: Path) -> dict | None:
    try:
        return integrity.stored_identity(file)
    except integrity.CorruptFile:
        return None  # a damaged footer: the footer check names it
