"""Which runs the app shows, and whether each one can be opened.

The store root is fixed when the server starts: ``streamlit run app/main.py -- --store PATH``, else
$ATLAS_STORE, else ``data/store``. It never comes from a URL or a widget, so a shared link cannot
point the app (or its SQL page) at another folder of the server; a link may only pick one of the
runs listed here, by folder name. ``PATH`` may be a store (a folder of run folders) or a single run
folder. Runs are told apart by their folder: two runs of the same dataset x model (the README's
``--out ...-all`` layout) are two entries.

``inspect_run`` checks everything ``app.connections.open_run`` relies on, so that a damaged or foreign run is
listed with a one-line reason naming the file and never shown:

* ``manifest.json`` reads through ``precompute.store.manifest`` (the only reader of it in the app), whose types
  and bounds it meets (no absurd layer or head count reaches a page);
* its ``schema_version`` is one this checkout reads and its ``status`` is ``complete``;
* the required tables are present;
* every table present, required or optional, passes the footer checks of ``precompute.store.integrity``: a
  readable footer naming its table, the row count the job wrote and the manifest recorded, (for a run of the
  current schema version) the schema's columns and types, and, when the run's files record the run identity,
  the manifest's identity (a table copied from another run is refused); a partitioned table (``head_attention``,
  one file per layer, or one file in older stores: ``precompute.store.layout``) has every file checked, each
  holding only its folder's layer, and their rows add up to the manifest's;
* every table file was read whole and passed the job's checks (page CRCs, statistics, value bounds) in its
  present state: ``app.verification`` does this once per file state and caches the outcome. A run whose files
  are not verified yet is verified right away when it is small (``$ATLAS_VERIFY_AT_LISTING_MB``, 256 MB of
  unverified files by default), else when it is opened, with progress, before any of its data is shown.

An unreadable optional table makes the run damaged too: opening a run binds a view to every table file, and a
file the job did not finish writing this way means the folder was changed after the job (a copy cut short, a full
disk), so the fix is the same for all: delete the file and rerun the job, which recomputes what is missing.

Nothing here imports Streamlit.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from app import verification
from app.verification import FileCheck
from precompute.store import integrity, layout, schema
from precompute.store.manifest import MANIFEST, DatasetInfo, Manifest, ManifestError, ModelInfo, read_manifest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STORE = Path("data") / "store"
STORE_ENV = "ATLAS_STORE"

# Store schema versions this app opens. A later schema may keep older ones readable; precompute then says which.
READABLE_SCHEMA_VERSIONS: tuple[int, ...] = tuple(
    getattr(schema, "READABLE_SCHEMA_VERSIONS", (schema.SCHEMA_VERSION,)))

# Tables a run must have for the app to open it; the others are optional (pages explain their absence).
REQUIRED_TABLES: tuple[str, ...] = ("pairs", "head_attention", "head_attention_agg")
# Unverified bytes of a run that listing it verifies at once; a larger run is verified when it is opened.
EAGER_ENV = "ATLAS_VERIFY_AT_LISTING_MB"


def store_from_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Path:
    """The store root: ``--store`` (after ``streamlit run app/main.py --``), else $ATLAS_STORE, else data/store.

    The default is looked up in the working directory first and then in the repository, so
    ``streamlit run app/main.py`` finds ``data/store`` from the repository root or anywhere else.
    """
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--store")
    args, _ = parser.parse_known_args(argv or [])
    if args.store:
        return Path(args.store).expanduser()
    if environ.get(STORE_ENV):
        return Path(environ[STORE_ENV]).expanduser()
    if (Path.cwd() / DEFAULT_STORE).is_dir():
        return DEFAULT_STORE
    return REPO / DEFAULT_STORE


@dataclass(frozen=True)
class RunInfo:
    """One run folder and what the app makes of it. ``name`` (the folder's name) identifies it."""

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


def run_labels(runs: list[RunInfo]) -> dict[str, str]:
    """A label per run, keyed by folder name: dataset x model, plus the folder where two runs share that label
    (a selectbox tells its options apart by their labels), plus "(cannot open)" for a refused run."""
    counts = Counter(r.label for r in runs)
    return {r.name: (r.label if counts[r.label] == 1 else f"{r.label} ({r.name})")
            + ("" if r.verified else " (not verified yet)" if r.ok else " (cannot open)") for r in runs}


def is_run_folder(path: Path) -> bool:
    """A folder the job wrote into: it has a manifest or Parquet tables (an unreadable folder counts, so that
    ``inspect_run`` says why it cannot be opened)."""
    try:
        return path.is_dir() and ((path / MANIFEST).exists() or any(path.glob("*.parquet"))
                                  or any(layout.exists(path, t) for t in schema.TABLES if schema.TABLES[t].partition_by))
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
    """The manifest and every table file: whose states make the run's version token."""
    return [path / MANIFEST] + [f for name in schema.TABLES for f in layout.files(path, name)]


def eager_bytes(environ: dict[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    return int(float(environ.get(EAGER_ENV, "256")) * 2**20)


def inspect_run(path: Path, *, verify_below: int | None = None) -> RunInfo:
    """Decide whether the app can open one run folder (see the module doc). The footer checks are cached per state
    of its files; a run with fewer than ``verify_below`` bytes (default: ``eager_bytes()``) of unverified files is
    verified now."""
    path = Path(path).resolve()
    signature = []
    for f in _files(path):
        try:
            st = f.stat()
        except OSError:
            continue
        signature.append(f"{f.relative_to(path)}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_size}")
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


@functools.lru_cache(maxsize=256)
def _inspect(path: Path, token: str) -> RunInfo:
    tables = frozenset(name for name in schema.TABLES if layout.exists(path, name))
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
    if manifest.schema_version not in READABLE_SCHEMA_VERSIONS:
        *older, newest = map(str, READABLE_SCHEMA_VERSIONS)
        readable = f"versions {', '.join(older)} and {newest}" if older else f"version {newest}"
        return (f"this run was written with store schema version {manifest.schema_version}, this app reads {readable}: "
                "rebuild it with this checkout's precompute job (or open it with a matching version of the app)")
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
    files = {name: layout.files(path, name) for name in sorted(tables)}
    stamped = any(_recorded_identity(f) is not None for table in files.values() for f in table)
    identity = manifest.identity.to_dict() if stamped else None
    checks = []
    for name, table_files in files.items():
        rows = getattr(manifest.tables.get(name), "rows", None)
        footer_rows = 0
        for file in table_files:  # one, or one per partition: the manifest's count is the table's, checked below
            check = FileCheck(file, name, current, rows if len(table_files) == 1 else None, identity)
            try:
                md = integrity.check_footer(file, name, schema.TABLES[name].schema if current else None,
                                            rows=check.rows, identity=identity)
            except integrity.CorruptFile as err:
                return (), f"{err}: delete it and rerun the job's command to rebuild it"
            checks.append(dataclasses.replace(check, footer_rows=md.num_rows))
            footer_rows += md.num_rows
        if rows is not None and footer_rows != rows:
            return (), (f"{layout.location(path, name)} holds {footer_rows:,} rows in {len(table_files)} files, the "
                        f"manifest recorded {rows:,}: a file was removed, added or replaced; rerun the job's command "
                        "to rebuild it")
    return tuple(checks), None


def _recorded_identity(file: Path) -> dict | None:
    try:
        return integrity.stored_identity(file)
    except integrity.CorruptFile:
        return None  # a damaged footer: the footer check names it


def model_folder(run: RunInfo) -> tuple[Path | None, str]:
    """The local folder of the run's model, if there is one, and a reason when there is none."""
    names = [str(v) for v in (run.model.path, run.model.id) if v]
    if not names:
        return None, "the manifest names no model"
    for name in names:
        cand = Path(name).expanduser()
        for path in ([cand] if cand.is_absolute() else [Path.cwd() / cand, REPO / cand, run.path / cand]):
            if (path / "config.json").is_file():
                return path.resolve(), ""
    return None, f"the model {names[-1]!r} named in the manifest is not a folder on this machine"
