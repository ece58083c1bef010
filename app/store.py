"""Finding the store and its runs, and deciding which runs the app can read.

A store is a folder of run folders (``<dataset>__<model>``), each with a ``manifest.json`` written
last by the precompute job. The app reads a run only when its manifest says ``status: complete``
and ``schema_version`` equals the schema this checkout was written for; anything else is shown
as a one-line reason instead of being opened. Nothing here imports Streamlit.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from precompute.store.schema import SCHEMA_VERSION, TABLES
from precompute.store.manifest import MANIFEST

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STORE = Path("data") / "store"
STORE_ENV = "ATLAS_STORE"

# Tables a run must have for the app to open it; the others are optional (pages explain their absence).
REQUIRED_TABLES: tuple[str, ...] = ("pairs", "head_attention", "head_attention_agg")

# The command that builds a first store: the README's first try (tests/app/test_store.py keeps them equal).
# The job writes <store>/<dataset>__<model> under its default --store data/store, where the app looks.
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

# The job's defaults for the settings that identify a run (precompute.job.JobConfig); a resume must repeat the rest.
_IDENTITY_DEFAULTS = {"easy_negatives": 20, "seed": 0, "candidates": None, "depth": None, "max_queries": None,
                      "max_length": 512, "batch_size": 32, "chunk_size": 256, "dtype": "auto"}


def store_from_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Path:
    """The store folder: ``--store`` (after ``streamlit run app/main.py --``), else $ATLAS_STORE, else data/store.

    A relative default is looked up in the working directory first and then in the repository,
    so ``streamlit run app/main.py`` finds ``data/store`` from the repository root or anywhere else.
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
    """One run folder and what the app makes of it."""

    name: str
    path: Path
    manifest: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    problem: str | None = None
    tables: frozenset[str] = frozenset()
    token: str = ""  # changes whenever the run is rewritten: part of every cache key

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def key(self) -> str:
        """Cache key of the run: its resolved path and its version token."""
        return f"{self.path}|{self.token}"

    def has(self, table: str) -> bool:
        return table in self.tables

    # -- manifest accessors (tolerant: the manifest is a draft contract) ----------------------
    @property
    def model(self) -> dict[str, Any]:
        return self.manifest.get("model") or {}

    @property
    def dataset(self) -> dict[str, Any]:
        return self.manifest.get("dataset") or {}

    @property
    def model_name(self) -> str:
        return str(self.model.get("name") or self.name.partition("__")[2] or "?")

    @property
    def dataset_name(self) -> str:
        return str(self.dataset.get("name") or self.name.partition("__")[0] or "?")

    @property
    def label(self) -> str:
        return f"{self.dataset_name} x {self.model_name}" + ("" if self.ok else " (cannot open)")


def inspect_run(path: Path) -> RunInfo:
    """Read one run folder's manifest and decide whether the app can open it."""
    path = Path(path).resolve()
    mpath = path / MANIFEST
    tables = frozenset(name for name in TABLES if (path / f"{name}.parquet").exists())
    try:
        stat = mpath.stat()
        token = f"{stat.st_mtime_ns}-{stat.st_size}"
        manifest = json.loads(mpath.read_text())
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        return RunInfo(path.name, path, {}, "no manifest.json: the precompute job has not finished this run", tables)
    except (OSError, ValueError) as err:
        return RunInfo(path.name, path, {}, f"manifest.json cannot be read ({err})", tables)
    version = manifest.get("schema_version")
    problem = None
    if version != SCHEMA_VERSION:
        problem = (
            f"this run was written with store schema version {version}, this app reads version {SCHEMA_VERSION}: "
            f"rebuild it with this checkout's precompute job (or open it with a matching version of the app)"
        )
    elif manifest.get("status") != "complete":
        problem = (
            f"the run's status is {manifest.get('status')!r}, not 'complete': the precompute job is still running "
            "or was interrupted (rerun the same command: it resumes)"
        )
    else:
        missing = [t for t in REQUIRED_TABLES if t not in tables]
        if missing:
            problem = f"the run lacks the table(s) {', '.join(missing)}"
    return RunInfo(path.name, path, manifest, problem, tables, token)


def find_runs(store: Path) -> list[RunInfo]:
    """Every subfolder of ``store`` holding a manifest.json (or parquet tables), sorted by name."""
    store = Path(store)
    if not store.is_dir():
        return []
    runs = []
    for child in sorted(store.iterdir()):
        if not child.is_dir() or child.name.startswith((".", "_")):
            continue
        if (child / MANIFEST).exists() or any(child.glob("*.parquet")):
            runs.append(inspect_run(child))
    return runs


def command_for(run: "RunInfo", extra: str = "") -> str:
    """The precompute command that resumes ``run`` (same dataset, model and identifying settings, read from
    its manifest), plus ``extra`` flags. The job keeps finished tables and computes only what is missing."""
    spec = run.dataset.get("spec") or "../shared/data/trec-dl-2020"
    model = run.model.get("id") or "../shared/models/minilm-l6-msmarco-ce"
    try:
        out = run.path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        out = run.path
    parts = ["python -m precompute", f"--dataset {spec}", f"--model {model}"]
    identity = run.manifest.get("identity") or {}
    for key, default in _IDENTITY_DEFAULTS.items():
        value = identity.get(key, default)
        if value != default and value is not None and not (key == "depth" and not identity.get("candidates")):
            parts.append(f"--{key.replace('_', '-')} {value}")
    parts.append(f"--out {out}")
    return " ".join(parts + ([extra] if extra else []))


def model_folder(run: RunInfo) -> tuple[Path | None, str]:
    """The local folder of the run's model, if there is one, and a reason when there is none."""
    names = [str(v) for v in (run.model.get("path"), run.model.get("id")) if v]
    if not names:
        return None, "the manifest names no model"
    for name in names:
        cand = Path(name).expanduser()
        for path in ([cand] if cand.is_absolute() else [Path.cwd() / cand, REPO / cand, run.path / cand]):
            if (path / "config.json").is_file():
                return path.resolve(), ""
    return None, f"the model {names[-1]!r} named in the manifest is not a folder on this machine"
