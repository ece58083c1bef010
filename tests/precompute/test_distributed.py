"""Several ranks (torch.distributed, gloo on the CPU): the store of a torchrun job equals a single process's, a killed
rank stops the job and the rerun completes it, and without a launcher (srun) the survivors stop on their own."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from precompute.store.schema import TABLES
from tests.conftest import table_files
from tests.precompute.conftest import make_dataset
from tests.tiny_models import build

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = shutil.which("torchrun")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(TORCHRUN is None, reason="torchrun (installed with torch) is not on the PATH")]
FLAGS = ["--easy-negatives", "3", "--batch-size", "4", "--chunk-size", "8", "--no-progress", "--ablations", "groups",
         "--ablation-components", "mlp@1:d/mean", "--patching", "tfc1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(argument list without --out, the single-process reference run folder)."""
    from precompute.cli import main

    root = tmp_path_factory.mktemp("dist")
    data, model = make_dataset(root / "data", n_queries=4), build("bert", root / "model")
    args = ["--dataset", str(data), "--model", str(model), "--cache", str(root / "cache"), *FLAGS]
    assert main([*args, "--out", str(root / "single")]) == 0
    return args, root / "single"


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATLAS_CRASH", "RANK", "WORLD_SIZE", "MASTER_"))}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def torchrun(args, out: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([TORCHRUN, "--nproc-per-node", "2", "--standalone", "-m", "precompute", *args, "--out", str(out)],
                          cwd=REPO, env=_env(**env), capture_output=True, text=True, timeout=240)


def assert_same_store(got: Path, want: Path) -> None:
    """Same tables, same rows: integer and text columns bit-identical, floats within 1e-6."""
    names = [str(p.relative_to(want)) for p in table_files(want)]
    assert [str(p.relative_to(got)) for p in table_files(got)] == names and len(names) >= 10
    for name in names:
        a, b = pq.read_table(got / name), pq.read_table(want / name)
        assert a.schema.equals(b.schema) and a.num_rows == b.num_rows, name
        for column in a.column_names:
            x, y = a.column(column), b.column(column)
            if pa.types.is_floating(x.type):
                np.testing.assert_allclose(x.to_numpy(zero_copy_only=False), y.to_numpy(zero_copy_only=False),
                                           atol=1e-6, rtol=0, equal_nan=True, err_msg=f"{name}.{column}")
            elif pa.types.is_list(x.type):
                xs, ys = x.to_pylist(), y.to_pylist()
                assert [v is None for v in xs] == [v is None for v in ys], f"{name}.{column}"
                for u, v in zip(xs, ys):
                    if u is not None:
                        np.testing.assert_allclose(np.array(u, dtype=float), np.array(v, dtype=float), atol=1e-6,
                                                   rtol=0, equal_nan=True, err_msg=f"{name}.{column}")
            else:
                assert x.equals(y), f"{name}.{column}"
    assert {p.relative_to(want).parts[0].removesuffix(".parquet") for p in table_files(want)} <= set(TABLES)


def test_two_ranks_write_the_single_process_store(setup, tmp_path):
    args, single = setup
    result = torchrun(args, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("store ready") == 1  # one rank speaks
    assert_same_store(tmp_path / "run", single)


def test_a_killed_rank_stops_the_job_and_the_rerun_completes_it(setup, tmp_path):
    args, single = setup
    out = tmp_path / "run"
    killed = torchrun(args, out, ATLAS_CRASH_AT="summaries.chunk", ATLAS_CRASH_RANK="1")
    assert killed.returncode != 0
    assert "stopped by the launcher" in killed.stderr or "silent" in killed.stderr
    assert any((out / "_parts").rglob("*.parquet"))  # what the ranks finished is kept
    rerun = torchrun(args, out)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_same_store(out, single)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_without_a_launcher_the_survivors_stop_within_the_deadline(setup, tmp_path):
    """srun starts each rank on its own; nothing kills the others when one dies. Rank 1 dies at its first summary chunk
    (kill -9): rank 0 must notice its silence and stop with a message of its own within ATLAS_DEAD_AFTER_S (+ slack)."""
    args, _ = setup
    port, deadline = _free_port(), 6
    procs = []
    for rank in (0, 1):
        env = _env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), ATLAS_DEAD_AFTER_S=str(deadline), ATLAS_CRASH_AT="summaries.chunk",
                   ATLAS_CRASH_RANK="1")
        procs.append(subprocess.Popen([sys.executable, "-m", "precompute", *args, "--out", str(tmp_path / "run")],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    assert procs[1].wait(timeout=120) == -signal.SIGKILL
    died = time.monotonic()
    _, err = procs[0].communicate(timeout=120)
    stopped_after = time.monotonic() - died
    assert procs[0].returncode == 1
    assert "rank 1 has been silent" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err
    assert stopped_after < deadline + 30  # rank 0 may still be finishing its own share when rank 1 dies
