"""The precompute commands the app prints, and how long the full run takes on a CPU.

The first try is the README's (a test keeps them equal); a resume repeats the run's identifying
settings from its manifest and adds flags (the job keeps finished tables and computes only what is
missing). The run-time estimate of the welcome page is computed here from measured throughputs.
Nothing here imports Streamlit.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from app.runs import RunInfo
from precompute.conditions import AblationRequest
from precompute.config import JobConfig
from precompute.store.manifest import Identity

# The command that builds a first store: the job writes <dataset>__<model> under data/store, where the app looks.
PRECOMPUTE_COMMAND = (
    "python -m precompute --dataset ../shared/data/trec-dl-2020 --model ../shared/models/minilm-l6-msmarco-ce "
    "--max-queries 3"
)
FULL_COMMAND = (
    "python -m precompute --dataset ../shared/data/trec-dl-2020 --model ../shared/models/minilm-l6-msmarco-ce "
    "--out data/store/trec-dl-2020__minilm-l6-msmarco-ce-all"
)
ABLATIONS_FLAGS = "--ablations directions,groups"  # the job's default sets (Table 1)
SWEEP_FLAGS = "--ablations directions,groups,layers,heads"  # plus per-layer sweeps and head ablations
COMPONENT_FLAGS = "--ablations components"  # every layer x {mlp, attn} x {all tokens, cls, q, d}
SUBSPACE_FLAGS = "--ablations subspace"  # the top heads' QK-subspace conditions (--subspace-heads top:5)
PATCHING_FLAGS = "--patching tfc1,cls"  # both activation-patching experiments

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
DEFAULT_CONDITIONS = len(AblationRequest(sets=JobConfig().ablations).conditions(n_layers=6, n_heads=12))

# Settings of the run's identity given as flags of their own name (model and dataset are given as --model, --dataset).
_FLAGS = tuple(f.name for f in dataclasses.fields(Identity) if f.name not in ("model", "dataset", "extra"))


def full_run_minutes() -> tuple[float, float]:
    """(summary pass, ablation pass) minutes of FULL_COMMAND on 2 CPU cores, from the measured throughputs."""
    return FULL_PAIRS / SUMMARY_PAIRS_PER_S / 60, FULL_PAIRS * DEFAULT_CONDITIONS / ABLATION_SCORINGS_PER_S / 60


def command_for(run: RunInfo, extra: str = "") -> str:
    """The precompute command that resumes ``run`` (same dataset, model and identifying settings, read from
    its manifest), plus ``extra`` flags. Values from the manifest are shell-quoted: a user who copies the command
    runs the job, whatever the manifest holds."""
    spec = run.dataset.spec or "../shared/data/trec-dl-2020"
    model = run.model.id or "../shared/models/minilm-l6-msmarco-ce"
    try:
        out = run.path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        out = run.path
    parts = ["python -m precompute", f"--dataset {shlex.quote(str(spec))}", f"--model {shlex.quote(str(model))}"]
    identity = run.manifest.identity if run.manifest else None
    defaults = {f.name: f.default for f in dataclasses.fields(JobConfig)}
    for key in _FLAGS:
        value = getattr(identity, key, None)
        if value is None or value == defaults[key] or (key == "depth" and not getattr(identity, "candidates", None)):
            continue
        parts.append(f"--{key.replace('_', '-')} {shlex.quote(str(value))}")
    parts.append(f"--out {shlex.quote(str(out))}")
    return " ".join(parts + ([extra] if extra else []))
