"""Crash injection: make the job die like ``kill -9`` at a named point, to test that a rerun repairs everything.

    ATLAS_CRASH_AT=summaries.part:3 python -m precompute ...   # dies the 3rd time a summary part is written
    ATLAS_CRASH_AT=summaries.chunk ATLAS_CRASH_RANK=1 torchrun --nproc-per-node 2 -m precompute ...  # rank 1 only

At the point the process sends itself SIGKILL: no exception, no ``finally``, no atexit, no flushed buffers,
exactly what a power cut or the OOM killer leaves behind. Every point is declared in :data:`POINTS` with what the
run folder holds when it dies there; ``tests/precompute/test_crash.py`` kills the job at each of them and shows
that the rerun ends with tables identical (byte for byte) to an uninterrupted run.

A ground-floor module: it imports nothing of precompute, so the writer, the stages and the job can all call it.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "ATLAS_CRASH_AT"
RANK_ENV = "ATLAS_CRASH_RANK"  # with several ranks: only this one dies (precompute.distributed)

# point -> what is on disk when the process dies there
POINTS: dict[str, str] = {
    "summaries.part": "a chunk's head_attention part is written, its pairs part is not (the chunk is not done)",
    "summaries.chunk": "both parts of a chunk are written",
    "summaries.staged": "the new summary tables are written beside the old ones, no commit journal yet",
    "summaries.committed": "the commit journal of the summary tables is written, no table installed yet",
    "summaries.installing": "some of the summary tables are installed, others are still staged",
    "summaries.installed": "every summary table is installed; their parts and the journal are still there",
    "spectra.written": "svd.parquet is written, the manifest does not record it yet",
    "contrasts.written": "head_contrasts.parquet is written, the manifest does not record it yet",
    "ablations.settings": "the manifest records the ablation kernel and stack, no part is written yet",
    "ablations.definitions": "the new conditions' definitions are written as a part, no score part yet",
    "ablations.part": "a score part (one chunk x a group of conditions) is written",
    "ablations.staged": "the four new ablation tables are written beside the old ones, no commit journal yet",
    "ablations.committed": "the commit journal of the ablation tables is written, no table installed yet",
    "ablations.installing": "some of the four ablation tables are installed, others are still staged",
    "ablations.installed": "every ablation table is installed; the journal and the merged parts are still there",
    "component_means.part": "a chunk's component sums part is written",
    "component_means.staged": "component_means is written beside the parts, no commit journal yet",
    "component_means.committed": "the commit journal of component_means is written, the table not installed yet",
    "component_means.installing": "component_means is being installed",
    "component_means.installed": "component_means is installed; its parts and the journal are still there",
    "patching.part": "a chunk's patching_effects part is written",
    "patching.staged": "patching_effects and patching_pairs are written beside the old ones, no commit journal yet",
    "patching.committed": "the commit journal of the patching tables is written, no table installed yet",
    "patching.installing": "one of the two patching tables is installed, the other is still staged",
    "patching.installed": "both patching tables are installed; the journal and the merged parts are still there",
    "manifest.temporary": "manifest.json's replacement is written to a temporary file, not yet renamed",
    "job.stage": "a stage has finished and recorded its section, the manifest on disk does not say so yet",
    "job.catalog": "atlas.duckdb is written, the manifest still says 'running'",
}

_passed: Counter[str] = Counter()


def point(name: str) -> None:
    """Die here (SIGKILL) when ``ATLAS_CRASH_AT`` names this point and it is passed for the n-th time (default 1st)."""
    if name not in POINTS:
        raise ValueError(f"undeclared crash point {name!r}; declare it in precompute.crash.POINTS")
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    rank = os.environ.get(RANK_ENV)
    if rank is not None and rank != os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")):
        return
    _passed[name] += 1
    if _passed[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
