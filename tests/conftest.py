"""Shared test fixtures: where ../shared lives, and skips when it is absent (a user's clone)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The tests run tiny models (2 layers, 32 wide): one torch thread computes them as fast as two, and OpenMP's
# second thread only spins, several times the CPU (and, on a shared machine, the wall time) of the whole job.
# Set before anything imports torch (conftest is read first), and inherited by the tests' subprocesses; a value the
# caller set is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ATLAS_SHARED", REPO.parent / "shared"))
DL20 = SHARED / "data" / "trec-dl-2020"
DL19 = SHARED / "data" / "trec-dl-2019"
MINILM = SHARED / "models" / "minilm-l6-msmarco-ce"


@pytest.fixture(scope="session")
def dl20_dir() -> Path:
    if not (DL20 / "queries.tsv").exists():
        pytest.skip("../shared/data/trec-dl-2020 is not present")
    return DL20


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    if not (MINILM / "config.json").exists():
        pytest.skip("../shared/models/minilm-l6-msmarco-ce is not present")
    return MINILM


def read_table(run: Path, table: str, columns: list[str] | None = None):
    """A whole table of a run folder as one Arrow table, whatever its layout (one file, or one per partition)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from precompute.store import layout

    return pa.concat_tables([pq.read_table(f, columns=columns) for f in layout.files(run, table)])


def table_files(run: Path) -> list[Path]:
    """Every finished table file of a run folder (each partition of a partitioned table), sorted: not the resumable
    parts, the staged tables or temporary files."""
    run = Path(run)
    return [p for p in sorted(run.rglob("*.parquet")) if not p.relative_to(run).parts[0].startswith(("_", "."))]


@pytest.fixture(scope="session", autouse=True)
def _verification_cache(tmp_path_factory):
    """The reader's verification cache (matching_atlas.verification) in a folder of the test session, never the
    repository's data/cache."""
    from matching_atlas.verification import CACHE_ENV

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("verify-cache")))
        yield
