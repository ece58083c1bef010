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


@pytest.fixture(scope="session", autouse=True)
def _verification_cache(tmp_path_factory):
    """The reader's verification cache (matching_atlas.verification) in a folder of the test session, never the
    repository's data/cache."""
    from matching_atlas.verification import CACHE_ENV

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("verify-cache")))
        yield
