"""The precompute job end to end: dataset -> pairs -> model -> summary pass -> store.

Every stage is idempotent against the run folder: a rerun of the same command skips what is
there (parts, finished tables) and ends with the same store, and a run folder is never reused
for different pairs or a different model (checked against its manifest).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from precompute.store.writer import RunWriter, StoreError

PACKAGES = ("torch", "transformers", "ir_datasets", "ir_measures", "pyarrow", "duckdb", "numpy")


@dataclass
class JobConfig:
    dataset: str = "dl20"
    model: str = "castorini/monobert-large-msmarco"
    out: Path | None = None
    store: Path = Path("data/store")
    cache: Path = Path("data/cache")
    easy_negatives: int = 20
    seed: int = 0
    candidates: str | None = None
    depth: int = 100
    max_queries: int | None = None
    max_length: int = 512
    batch_size: int = 32
    chunk_size: int = 256
    device: str = "auto"
    dtype: str = "auto"
    progress: bool = True
    # Stages, run in this order (precompute.stages.STAGES). Ablations last: the longest, and the others need no scores.
    stages: tuple[str, ...] = ("summaries", "spectra", "contrasts", "ablations")
    # Ablations (precompute.ablation). Not part of the run identity: conditions accumulate in the folder and a
    # rerun computes only the missing ones (kernel and stack must stay those of the folder).
    ablations: tuple[str, ...] = ("directions", "groups")  # condition sets; () = skip the stage (--ablations none)
    ablation_modes: tuple[str, ...] = ("zero",)  # 'zero' (the paper's) and/or 'mask'
    ablation_layers: tuple[str, ...] = ("all",)  # layer specs: 'all', '3', '0-5'
    ablation_groups: tuple[str, ...] = ()  # user groups: 'NAME=q_d,d_q' or 'Q->D,D->Q'
    ablation_sweep: tuple[str, ...] = ("q_d", "d_q", "cross")  # per-layer sweep targets (set 'layers')
    ablation_heads: tuple[str, ...] = ("all",)  # heads to zero one at a time (set 'heads'): 'all', '3.5', '3.*'
    ablation_stack: int = 1  # conditions sharing a forward pass
    ablation_kernel: str = "sdpa"  # 'sdpa' (fused) or 'eager' (the summary pass's attention function)
    measures: tuple[str, ...] = ("nDCG@10",)  # ablation_metrics measures (ir_measures names)
    eval_scopes: tuple[str, ...] | None = None  # None: ('pairs',), plus 'run' with --candidates
    extra: dict = field(default_factory=dict)  # stage-specific settings, recorded in the manifest

    def pair_parameters(self) -> dict:
        """What fixes the pairs and their numbers: a run folder holds one such set."""
        return {
            "easy_negatives": self.easy_negatives, "seed": self.seed, "candidates": self.candidates,
            "depth": self.depth if self.candidates else None, "max_queries": self.max_queries,
            "max_length": self.max_length, "batch_size": self.batch_size, "chunk_size": self.chunk_size,
        }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_folder(cfg: JobConfig, dataset_name: str) -> Path:
    if cfg.out is not None:
        return Path(cfg.out)
    return Path(cfg.store) / f"{dataset_name}__{Path(cfg.model.rstrip('/')).name}"


def check_same_run(manifest: dict | None, identity: dict) -> None:
    """Refuse to mix two runs in one folder; say which setting differs."""
    if not manifest:
        return
    for key, value in identity.items():
        old = manifest.get("identity", {}).get(key)
        if old != value:
            raise StoreError(
                f"{key} differs from the run already in this folder ({old!r} there, {value!r} now); "
                "pass another --out or delete that folder"
            )


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def run(cfg: JobConfig) -> Path:
    """Run the job; returns the run folder. Raises DatasetError / ModelError / StoreError with one-line messages."""
    from precompute import datasets, model, pairs as pairs_mod

    started = time.time()
    ds = datasets.resolve(cfg.dataset, Path(cfg.cache))
    root = run_folder(cfg, ds.name)
    writer = RunWriter(root)
    writer.ensure_writable()
    manifest = writer.read_manifest()
    identity = {"model": model.identity(cfg.model), "dataset": ds.source, "dtype": cfg.dtype, **cfg.pair_parameters()}
    check_same_run(manifest, identity)

    pair_set = pairs_mod.build_pairs(
        ds, easy_negatives=cfg.easy_negatives, seed=cfg.seed, candidates=cfg.candidates,
        depth=cfg.depth, max_queries=cfg.max_queries, progress=cfg.progress,
    )
    if not pair_set.pairs:
        raise StoreError(f"dataset {cfg.dataset!r} gave no pairs with text; check its qrels and docs")
    lm = model.load(cfg.model, cfg.device, cfg.dtype)
    manifest = manifest or {}
    manifest.update(
        status="running",
        identity=identity,
        created=manifest.get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        model=lm.describe(),
        dataset={"spec": cfg.dataset, "name": ds.name, "source": ds.source},
        parameters={**cfg.pair_parameters(), "device": lm.device, "dtype": lm.dtype, **cfg.extra},
        counts={
            "pairs": len(pair_set.pairs), "queries": len(pair_set.queries),
            "neg_type": pair_set.counts(), "skipped": pair_set.skipped,
        },
        versions=versions(),
    )
    manifest.setdefault("timings", {})
    writer.write_manifest(manifest)

    from precompute import stages

    for stage in cfg.stages:
        t0 = time.time()
        stages.STAGES[stage](cfg=cfg, lm=lm, ds=ds, pair_set=pair_set, writer=writer, manifest=manifest)
        manifest["timings"][f"{stage}_s"] = round(time.time() - t0, 2)
        writer.write_manifest(manifest)

    manifest["timings"]["total_s"] = round(time.time() - started, 2)
    manifest["status"] = "complete"
    from precompute.store.connect import write_catalog

    write_catalog(root)
    writer.write_manifest(manifest)
    return root
