"""The precompute commands the app prints, and how long the full run takes on a CPU.

The first try is the README's (a test keeps them equal); a run's command repeats every setting of its last job as
its manifest records them (:func:`precompute.config.rerun_command`: the same command the report prints), with the
settings a page asks to add replacing theirs: run, it resumes the run (same identity) and computes only what is
missing. The run-time estimate of the welcome page is computed here from measured throughputs. Nothing here imports
Streamlit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matching_atlas.analyses import command_for as reader_command
from matching_atlas.opening import RunInfo
from precompute.conditions import AblationRequest
from precompute.config import JobConfig

# The command that builds a first store: the job writes <dataset>__<model> under data/store, where the app looks.
PRECOMPUTE_COMMAND = (
    "python -m precompute --dataset ../shared/data/trec-dl-2020 --model ../shared/models/minilm-l6-msmarco-ce "
    "--max-queries 3"
)
FULL_COMMAND = (
    "python -m precompute --dataset ../shared/data/trec-dl-2020 --model ../shared/models/minilm-l6-msmarco-ce "
    "--out data/store/trec-dl-2020__minilm-l6-msmarco-ce-all"
)
# Settings a page's command sets (JobConfig field -> value), replacing those of the run's last job.
ABLATIONS_FLAGS = {"ablations": JobConfig().ablations}  # the job's default sets (Table 1)
SWEEP_FLAGS = {"ablations": ("directions", "groups", "layers", "heads")}  # plus per-layer sweeps and head ablations
COMPONENT_FLAGS = {"ablations": ("components",)}  # every layer x {mlp, attn} x {all tokens, cls, q, d}
SUBSPACE_FLAGS = {"ablations": ("subspace",)}  # the top heads' QK-subspace conditions (--subspace-heads)
PATCHING_FLAGS = {"patching": ("tfc1", "cls")}  # both activation-patching experiments

# Throughputs measured on the 2-core CPU machine with the reference MiniLM-L6 model (README, "Benchmarks"):
# bench/precompute.py times the summary pass on 256 DL20 pairs (batch 32; median of 5 rounds, 2026-11-26);
# bench/ablation.py the full default sweep (32 conditions, baseline included, x 64 pairs = 2,048 scorings in
# 62.1 s). The first try (PRECOMPUTE_COMMAND, 336 pairs) took 4 min 10 s end to end.
SUMMARY_PAIRS_PER_S = 53.2
ABLATION_SCORINGS_PER_S = 2048 / 62.1
FIRST_TRY_TIME = "4 min 10 s"
# FULL_COMMAND's run: every judged TREC DL 2020 query, its judged passages and 20 easy negatives each.
FULL_QUERIES, FULL_PAIRS = 54, 6084
# Conditions of the job's default ablation sets, baseline included (their number does not depend on the model).
DEFAULT_CONDITIONS = len(AblationRequest.from_config(JobConfig()).conditions(n_layers=6, n_heads=12))


def full_run_minutes() -> tuple[float, float]:
    """(summary pass, ablation pass) minutes of FULL_COMMAND on 2 CPU cores, from the measured throughputs."""
    return FULL_PAIRS / SUMMARY_PAIRS_PER_S / 60, FULL_PAIRS * DEFAULT_CONDITIONS / ABLATION_SCORINGS_PER_S / 60


def command_for(run: RunInfo, extra: Mapping[str, Any] | None = None) -> str:
    """The precompute command that resumes ``run``: every setting of its last job, read from its manifest, with
    ``extra`` settings (field name -> value, e.g. :data:`PATCHING_FLAGS`) replacing theirs (the reader's
    :func:`matching_atlas.analyses.command_for`: ``--out`` relative to the working folder when inside it, every word
    shell-quoted)."""
    return reader_command(run.path, run.manifest.job_settings() if run.manifest else {}, extra)
