"""A SQL session's process: where a visitor's statement runs, bounded by the operating system.

The server never parses or runs a visitor's text itself. Each SQL session (``app.connections.SqlSessions``)
has a worker process that holds the session's locked DuckDB connection (``open_sql``) and runs its
statements through ``app.sql_console``, under the session's ``SqlLimits``:

* **Memory.** The worker sets ``RLIMIT_DATA`` to ``limits.memory`` before it opens the connection. Every
  private writable mapping counts (DuckDB's buffer manager and what it allocates outside it, Python, Arrow,
  pandas), so a statement that needs more gets an allocation failure, reported in one line, and the
  worker is replaced. DuckDB's ``memory_limit`` is the cap less ``WORKER_HEADROOM``, so large queries
  spill before they reach it. ``RLIMIT_AS`` is not usable: opening a DuckDB database reserves ~600 MB of
  address space (VmSize 0.95 GB for 120 MB resident) and a thread that cannot get its thread-local
  storage aborts the process.
* **Time.** The worker interrupts DuckDB at ``limits.timeout_s``; if no answer has come ``KILL_GRACE_S``
  later (single-value functions and the optimizer do not look at DuckDB's interrupt flag) the server
  kills the process with SIGKILL through a pidfd (never a reused pid), and the session gets a fresh
  worker for its next statement. A worker also arms ``alarm()`` per statement, so it ends on its own
  should the server be gone.
* **CPU.** Workers run at nice ``NICE`` with ``limits.threads`` DuckDB threads: the pages' own queries
  (in the server, nice 0) keep the CPU while every SQL session is busy.
* **The answer.** A JSON header and at most one Arrow IPC stream of at most ``limits.reply_bytes``, never
  a pickle (the server does not unpickle what a process running visitor text sends); the server counts
  its values again before converting it.

Workers are forked by a *spawner*: one process per server, started on first use, that has imported
DuckDB, pyarrow and pandas and holds no thread (``SPAWNER_ENV`` turns off OpenBLAS's pool and Arrow's
jemalloc background thread; a test checks). A new worker is ready in a fraction of a second, sharing
those modules' pages, where a fresh interpreter takes ~0.7 s; and nothing is forked from the Streamlit
server, whose threads' locks a fork would copy in whatever state they are.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path

import pandas as pd
import pyarrow as pa

from app.sql_console import MAX_ROW_LIMIT, SqlError, SqlLimits, SqlOutOfMemory, SqlResult, execute, show_size
from app.sql_results import cells, to_frame
from matching_atlas.connection import lock
from matching_atlas.errors import error_text
from precompute.store.connect import connect
from precompute.store.sql import literal

KILL_GRACE_S = 2.0  # after the time limit, before the server kills a worker that did not answer
ALARM_SLACK_S = 5  # the worker's own alarm, after the server's kill
NICE = 19
SPILL_LIMIT = "4GB"  # per session, on disk
SPAWNER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "JE_ARROW_MALLOC_CONF": "background_thread:false", "ARROW_DEFAULT_MEMORY_POOL": "system"}
REPO = Path(__file__).resolve().parents[1]
MAX_HEADER_BYTES = 2**20
MAX_CONFIG_BYTES = 2**16


def open_sql(run: Path | str, spill: Path, *, threads: int = 1, memory_limit: int = SqlLimits().duckdb_memory):
    """A locked in-memory DuckDB connection where the run's tables are views: a memory and a spill cap, then the
    reader's locks (:func:`matching_atlas.connection.lock`: files only in the run folder and the private spill folder,
    no external access, no extension, the configuration locked so no statement can undo any of it). One per session:
    cursors of one connection share one catalog."""
    run = Path(run).resolve()
    con = connect(run, threads=threads)
    for setting in (
        f"SET temp_directory = {literal(spill)}",
        f"SET max_temp_directory_size = '{SPILL_LIMIT}'",
        f"SET memory_limit = '{int(memory_limit) // 2**20}MiB'",
        "SET parquet_metadata_cache = true",
    ):
        con.execute(setting)
    lock(con, (run, spill))
    return con


# -- inside the spawner and the workers ---------------------------------------------------------------
def spawner_main(fd: int) -> None:
    """The spawner's loop: for each request of the server (a config and a socket), fork a worker on that socket
    and answer with its pid and a pidfd. Ends when the server closes its end."""
    os.nice(NICE)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the server's; workers end when it closes their socket
    control = socket.socket(fileno=fd)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(control, MAX_CONFIG_BYTES, 1)
        except OSError:
            return
        if not msg or not fds:
            return
        _reap()
        pid = os.fork()
        if pid == 0:
            control.close()
            _worker_main(fds[0], json.loads(msg))
        os.close(fds[0])
        pidfd = os.pidfd_open(pid)
        try:
            socket.send_fds(control, [str(pid).encode()], [pidfd])
        finally:
            os.close(pidfd)


def _reap() -> None:
    """Collect the workers that ended (the server watches them through their pidfds)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _worker_main(fd: int, config: dict) -> None:
    code = 1
    try:
        _serve(Connection(fd), config)
        code = 0
    finally:
        os._exit(code)


def _serve(conn: Connection, config: dict) -> None:
    """One worker: cap its memory, open the session's connection, answer statements until the server hangs up."""
    limits = SqlLimits(**config["limits"])
    resource.setrlimit(resource.RLIMIT_DATA, (limits.memory, limits.memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        con, failed = open_sql(config["run"], Path(config["spill"]), threads=limits.threads,
                               memory_limit=limits.duckdb_memory), ""
    except Exception as err:  # noqa: BLE001 - told to the server on the first statement
        con, failed = None, f"the SQL session could not open the run: {error_text(err)}"
    while True:
        try:
            request = json.loads(conn.recv_bytes(12 * limits.max_chars + 4096))  # (\uXXXX escapes)
        except EOFError:
            return
        signal.alarm(math.ceil(limits.timeout_s + KILL_GRACE_S) + ALARM_SLACK_S)
        if con is None:
            conn.send_bytes(json.dumps({"error": failed, "restart": True}).encode())
            return
        try:
            bounded = execute(con, request["text"], explain=request["explain"], limit=request["limit"],
                              limits=limits)
        except SqlError as err:
            conn.send_bytes(json.dumps({"error": str(err), "restart": isinstance(err, SqlOutOfMemory)}).encode())
            if isinstance(err, SqlOutOfMemory):
                return  # after an allocation failure, a fresh worker rather than a damaged one
            signal.alarm(0)
            continue
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, bounded.table.schema) as writer:
            writer.write_table(bounded.table)
        conn.send_bytes(json.dumps({"truncated": bounded.truncated}).encode())
        conn.send_bytes(sink.getvalue())
        signal.alarm(0)


# -- in the server --------------------------------------------------------------------------------------
class _Spawner:
    """The server's side of the spawner process (started on first use, restarted if it died)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._control: socket.socket | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def fork(self, channel: socket.socket, config: dict) -> tuple[int, int]:
        """A new worker talking over ``channel``: its (pid, pidfd)."""
        payload = json.dumps(config).encode()
        with self._lock:
            for _ in range(2):
                if self._proc is None or self._proc.poll() is not None:
                    self._start()
                try:
                    socket.send_fds(self._control, [payload], [channel.fileno()])
                    msg, fds, _, _ = socket.recv_fds(self._control, 64, 1)
                    if msg and fds:
                        return int(msg), fds[0]
                except OSError:
                    pass
                self.close()
        raise SqlError("a SQL session could not be started: try again in a moment")

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        ours.settimeout(60)  # the first answer waits for the spawner's imports
        env = {**os.environ, **SPAWNER_ENV,
               "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
        with theirs:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from app.sql_worker import spawner_main; "
                                       "spawner_main(int(sys.argv[1]))", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self._control = ours

    def close(self) -> None:
        if self._control is not None:
            self._control.close()  # the spawner ends when it reads the end of its socket
            self._control = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


SPAWNER = _Spawner()
atexit.register(SPAWNER.close)


class SqlWorker:
    """The server's handle on one worker process: run a statement within the time limit, stop it, close it."""

    def __init__(self, run: Path, spill: Path, limits: SqlLimits, spawner: _Spawner = SPAWNER) -> None:
        self.limits = limits
        ours, theirs = socket.socketpair()
        with theirs:
            try:
                self.pid, self._pidfd = spawner.fork(theirs, {"run": str(run), "spill": str(spill),
                                                              "limits": asdict(limits)})
            except BaseException:
                ours.close()
                raise
        self._conn = Connection(ours.detach())
        self._lock = threading.Lock()
        self._stopped = ""  # why the server stopped it: "time", "replaced", "closed", "restart"

    @property
    def alive(self) -> bool:
        """Not stopped by the server and still running."""
        with self._lock:
            return not self._stopped and self._pidfd >= 0 and not self._exited(0)

    def _exited(self, timeout_s: float) -> bool:
        poll = select.poll()
        poll.register(self._pidfd, select.POLLIN)
        return bool(poll.poll(int(timeout_s * 1000)))

    def run(self, text: str, explain: str, limit: int) -> SqlResult:
        """``text`` on this worker; SqlError (one line) when it is refused, fails, or runs out of time or memory."""
        start = time.perf_counter()
        timer = threading.Timer(self.limits.timeout_s + KILL_GRACE_S, self.stop, args=("time",))
        timer.start()
        try:
            self._conn.send_bytes(json.dumps({"text": text, "explain": explain, "limit": int(limit)}).encode())
            header = json.loads(self._conn.recv_bytes(MAX_HEADER_BYTES))
            if "error" in header:
                if header.get("restart"):
                    self.stop("restart")
                raise SqlError(header["error"])
            data = self._conn.recv_bytes(self.limits.reply_bytes)
        except (EOFError, OSError, ValueError) as err:  # the worker died, was killed, or sent what it must not
            reason = self._stopped
            self.stop("restart")
            raise SqlError(self._ended(reason)) from err
        finally:
            timer.cancel()
        frame = self._frame(data)
        return SqlResult(frame, header.get("truncated", ""), time.perf_counter() - start)

    def _frame(self, data: bytes) -> pd.DataFrame:
        """The frame of the worker's Arrow stream, after counting its rows and values again."""
        try:
            table = pa.ipc.open_stream(data).read_all()
            if table.num_rows > MAX_ROW_LIMIT or cells(table) > self.limits.max_cells:
                raise SqlError("the SQL session sent a result over its bounds: it was not shown")
            return to_frame(table)
        except SqlError:
            raise
        except Exception as err:  # noqa: BLE001 - one line, whatever Arrow or pandas raise
            raise SqlError(error_text(err)) from err

    def _ended(self, reason: str) -> str:
        if reason == "time":
            return f"the query ran longer than {self.limits.timeout_s:g} s and was stopped"
        if reason == "replaced":
            return "the query was interrupted (a newer query of this session replaced it)"
        return (f"the SQL session stopped while running the query (it needed more than "
                f"{show_size(self.limits.memory)} of memory, or failed); the next query starts a fresh one")

    def stop(self, why: str) -> None:
        """Kill the process (SIGKILL: nothing it runs can delay it); the first reason given is kept."""
        with self._lock:
            if self._pidfd < 0:
                return
            self._stopped = self._stopped or why
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Stop the process and wait (up to 2 s) until it is gone, so that its memory is free again."""
        self.stop("closed")
        with self._lock:
            if self._pidfd < 0:
                return
            self._exited(2.0)
            os.close(self._pidfd)
            self._pidfd = -1
        self._conn.close()
