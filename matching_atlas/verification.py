"""Every table file of a run read whole and checked before any of it is read, once per state of the file.

The checks are the job's own (:func:`precompute.store.integrity.verify`): page CRCs, row counts (footer, written,
manifest), the table's name and columns, the run identity every file records against the manifest's, statistics
that must not exclude data, and the value bounds of ``precompute.store.schema``. A file that fails makes its run
"cannot open" with the one-line reason naming it.

Reading 3 x 10^8 rows takes minutes, so each outcome is kept, in memory and in a cache folder of the machine
(``$ATLAS_VERIFY_CACHE``, default ``data/cache/verified`` of the repository, never the run folder or the shared
data; the app, the report and notebooks share it), under a key of everything the outcome depends on:

* the file's state: resolved path, device, inode, size, mtime_ns and ctime_ns (ctime is set by the kernel on any
  write, rename or ``touch``, and cannot be set back by a user, so a file changed after it was verified has
  another key, whatever its mtime claims);
* what it was checked against: table name, expected columns and types, bounds, the manifest's row count and
  identity, and a digest of the checking code (integrity.py and the schema), so new checks re-verify;

and each entry carries an HMAC-SHA256 of its key and outcome under a secret made once for the cache folder
(mode 0600): a cache entry edited by hand, copied from elsewhere or damaged is ignored and the file verified
again; it can never turn into "verified". A cache folder that cannot be written only costs the reuse across
processes.

Verification runs in a background thread per run state (:func:`start`), so that a page rerun or a second visitor of
the app joins the one in progress and sees its progress instead of starting over; :func:`matching_atlas.open_run`
waits for it behind a tqdm bar.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from precompute.console import first_line
from precompute.store import integrity, schema

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # the read-only data beside the checkout
CACHE_ENV = "ATLAS_VERIFY_CACHE"
DEFAULT_CACHE = REPO / "data" / "cache" / "verified"
THREADS = max(1, min(4, int(os.environ.get("ATLAS_VERIFY_THREADS", os.cpu_count() or 1))))
_SECRET = "secret"
# What the checks are: a change to either file re-verifies every file.
_CODE = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (integrity, schema))).hexdigest()[:16]
_RUNNING: dict[str, "Verification"] = {}
_RUNNING_LOCK = threading.Lock()


@dataclass(frozen=True)
class FileCheck:
    """One table file and what it must be."""

    path: Path
    table: str
    current: bool  # a run of this checkout's schema version: the columns and types must be the schema's
    rows: int | None  # the manifest's row count
    identity: dict | None  # the run identity the file must record (None: the run's files record none)
    footer_rows: int = 0  # rows its footer announces (for progress)

    def key(self) -> str | None:
        """The cache key of the file's present state (see the module doc); None when it cannot be stat'ed."""
        try:
            st = self.path.stat()
        except OSError:
            return None
        spec = schema.TABLES[self.table]
        state = {
            "path": str(self.path), "dev": st.st_dev, "ino": st.st_ino, "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "table": self.table,
            "columns": [(c.name, str(c.type)) for c in spec.columns] if self.current else None,
            "bounds": sorted(spec.bounds.items()), "rows": self.rows, "identity": self.identity, "code": _CODE,
        }
        return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def run(self, progress=None) -> str | None:
        """Verify the file now: None, or the one-line reason it is refused."""
        try:
            integrity.verify(self.path, self.table, schema.TABLES[self.table].schema if self.current else None,
                             rows=self.rows, identity=self.identity, threads=THREADS, progress=progress)
        except integrity.CorruptFile as err:
            return f"{err}: delete it and rerun the job's command to rebuild it"
        return None


class Cache:
    """Outcomes by key: a dict in memory over one small signed file per key in ``folder``."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._memory: dict[str, str | None] = {}
        self._secret: bytes | None = None
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[bool, str | None]:
        """(known, problem): whether ``key`` was verified, and its outcome (None = verified)."""
        with self._lock:
            if key in self._memory:
                return True, self._memory[key]
        try:  # an entry is two lines: its MAC, then the problem ("" = verified)
            mac, _, text = (self.folder / f"{key}.entry").read_text().partition("\n")
            problem = text or None
            good = hmac.compare_digest(mac, self._mac(key, problem, create=False))
        except (OSError, ValueError, UnicodeDecodeError):
            return False, None
        if not good:
            return False, None
        with self._lock:
            self._memory[key] = problem
        return True, problem

    def put(self, key: str, problem: str | None, run_folder: Path | None = None) -> None:
        """Keep an outcome; on disk too unless the folder lies in ``run_folder`` or the shared data (a cache
        variable pointed there by mistake: nothing is ever written into a run or ../shared)."""
        with self._lock:
            self._memory[key] = problem
        if any(_inside(self.folder, f) for f in (run_folder, SHARED) if f is not None):
            return
        try:
            mac = self._mac(key, problem, create=True)
            target = self.folder / f"{key}.entry"
            tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}")
            tmp.write_text(f"{mac}\n{problem or ''}")
            os.replace(tmp, target)
        except OSError:
            pass  # a read-only cache folder: outcomes are kept in memory for this process only

    def _mac(self, key: str, problem: str | None, *, create: bool) -> str:
        message = json.dumps([key, problem]).encode()
        return hmac.new(self._key(create), message, hashlib.sha256).hexdigest()

    def _key(self, create: bool) -> bytes:
        """The folder's secret, made on first use (mode 0600); OSError when there is none and ``create`` is false."""
        if self._secret is None:
            path = self.folder / _SECRET
            if create and not path.exists():
                self.folder.mkdir(parents=True, exist_ok=True)
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "w") as out:
                        out.write(secrets.token_hex(32))
                except FileExistsError:
                    pass  # another process made it meanwhile
            secret = path.read_text().strip()
            if len(secret) < 64:
                raise OSError(f"{path} is not a secret the atlas made")
            self._secret = secret.encode()
        return self._secret


def cache_folder(environ: dict[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ[CACHE_ENV]).expanduser() if environ.get(CACHE_ENV) else DEFAULT_CACHE


_CACHES: dict[Path, Cache] = {}


def cache() -> Cache:
    """The cache of the folder ``$ATLAS_VERIFY_CACHE`` names now (one per folder and process)."""
    folder = cache_folder().resolve()
    with _RUNNING_LOCK:
        return _CACHES.setdefault(folder, Cache(folder))


@dataclass
class Verification:
    """The verification of some files, running in a background thread; read ``rows_done``/``rows_total`` for
    progress, wait on ``finished``; ``problem`` is the first file's reason, or None."""

    checks: list[FileCheck]
    rows_total: int
    rows_done: int = 0
    problem: str | None = None
    started: float = field(default_factory=time.monotonic)
    finished: threading.Event = field(default_factory=threading.Event)

    def run(self, store: Cache) -> None:
        try:
            for check in self.checks:
                before = self.rows_done
                self.problem = verify_file(check, store, lambda rows: setattr(self, "rows_done", before + rows))
                self.rows_done = before + check.footer_rows
                if self.problem:
                    break
        except Exception as err:  # noqa: BLE001 - any failure is the run's reason, in one line, never a hang
            self.problem = f"the run's files could not be verified ({type(err).__name__}: {first_line(err)})"
        finally:
            self.finished.set()

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None before any row is done."""
        spent = time.monotonic() - self.started
        if not self.rows_done or spent <= 0:
            return None
        return max(0.0, (self.rows_total - self.rows_done) / (self.rows_done / spent))


def known(check: FileCheck, store: Cache | None = None) -> tuple[bool, str | None]:
    """(whether the file's present state was verified, its outcome) without reading the file."""
    key = check.key()
    if key is None:
        return True, f"{check.path} cannot be read: reload the page (the run folder changed)"
    return (store or cache()).get(key)


def verify_file(check: FileCheck, store: Cache | None = None, progress=None) -> str | None:
    """The file's outcome: from the cache for its present state, else verified now and cached. A file that changes
    while it is verified is refused this time (its next state is verified when the page is reloaded)."""
    store = store or cache()
    key = check.key()
    if key is None:
        return f"{check.path} cannot be read: reload the page (the run folder changed)"
    done, problem = store.get(key)
    if done:
        return problem
    problem = check.run(progress)
    if check.key() != key:
        return f"{check.path} changed while it was being verified: reload the page"
    store.put(key, problem, check.path.parent)
    return problem


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def start(name: str, checks: list[FileCheck]) -> Verification:
    """The verification of ``checks`` under ``name`` (a run's cache key): the one in progress, else a new one in a
    background thread. A finished one is forgotten once its outcome is in the cache."""
    store = cache()
    with _RUNNING_LOCK:
        job = _RUNNING.get(name)
        if job is None or job.finished.is_set():
            job = Verification(list(checks), sum(c.footer_rows for c in checks))
            _RUNNING[name] = job
            threading.Thread(target=_run_and_forget, args=(name, job, store), daemon=True,
                             name="atlas-verify-run").start()
        return job


def _run_and_forget(name: str, job: Verification, store: Cache) -> None:
    job.run(store)
    with _RUNNING_LOCK:
        if _RUNNING.get(name) is job:
            del _RUNNING[name]
