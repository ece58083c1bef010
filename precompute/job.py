"""The precompute job end to end: dataset -> pairs -> model -> stages -> store.

Every stage is idempotent against the run folder: a rerun of the same command skips what is
there (parts, finished tables) and ends with the same store, and a run folder is never reused
for different pairs or a different model (checked against its manifest). Where each stage's work
happens: :mod:`precompute.stages` (one module per stage, run in order by :func:`run`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import sys
import time
from pathlib import Path

from precompute.config import JobConfig
from precompute.console import Console
from precompute.store.manifest import STATUS_COMPLETE, STATUS_RUNNING, Counts, DatasetInfo, Identity, Manifest, ModelInfo
from precompute.store.writer import RunWriter, StoreError

PACKAGES = ("torch", "transformers", "ir_datasets", "ir_measures", "pyarrow", "duckdb", "numpy")


def run_folder(cfg: JobConfig, dataset_name: str) -> Path:
    if cfg.out is not None:
        return Path(cfg.out)
    return Path(cfg.store) / f"{dataset_name}__{Path(cfg.model.rstrip('/')).name}"


def identity_of(cfg: JobConfig, model_identity: str, dataset_source: str) -> Identity:
    """What fixes the run's numbers: the model, the dataset, the dtype and the pair parameters."""
    return Identity(model=model_identity, dataset=dataset_source, dtype=cfg.dtype, **cfg.pair_parameters())


def check_same_run(manifest: Manifest | None, identity: Identity) -> None:
    """Refuse to mix two runs in one folder; say which setting differs."""
    if manifest is None:
        return
    old, new = manifest.identity.to_dict(), identity.to_dict()
    for key, value in new.items():
        if old.get(key) != value:
            raise StoreError(
                f"{key} differs from the run already in this folder ({old.get(key)!r} there, {value!r} now); "
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
    from precompute.stages import STAGES
    from precompute.stages.context import RunContext
    from precompute.store.connect import write_catalog

    started = time.time()
    console = Console(progress=cfg.progress)
    ds = datasets.resolve(cfg.dataset, Path(cfg.cache))
    root = run_folder(cfg, ds.name)
    writer = RunWriter(root)
    writer.ensure_writable()
    previous = writer.read_manifest()
    identity = identity_of(cfg, model.identity(cfg.model), ds.source)
    check_same_run(previous, identity)

    pair_set = pairs_mod.build_pairs(
        ds, easy_negatives=cfg.easy_negatives, seed=cfg.seed, candidates=cfg.candidates,
        depth=cfg.depth, max_queries=cfg.max_queries, progress=cfg.progress,
    )
    if not pair_set.pairs:
        raise StoreError(f"dataset {cfg.dataset!r} gave no pairs with text; check its qrels and docs")
    lm = model.load(cfg.model, cfg.device, cfg.dtype)
    manifest = previous or Manifest()
    manifest = dataclasses.replace(
        manifest,
        status=STATUS_RUNNING,
        identity=identity,
        created=manifest.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        model=ModelInfo.from_dict(lm.describe()),
        dataset=DatasetInfo(spec=cfg.dataset, name=ds.name, source=ds.source),
        parameters={**cfg.pair_parameters(), "device": lm.device, "dtype": lm.dtype},
        counts=Counts(pairs=len(pair_set.pairs), queries=len(pair_set.queries), neg_type=pair_set.counts(),
                      skipped=pair_set.skipped, truncated=manifest.counts.truncated),
        versions=versions(),
    )
    ctx = RunContext(cfg=cfg, lm=lm, ds=ds, pair_set=pair_set, writer=writer, manifest=manifest, console=console)
    ctx.save_manifest()

    for name in cfg.stages:
        t0 = time.time()
        STAGES[name].run(ctx)
        ctx.manifest.timings[f"{name}_s"] = round(time.time() - t0, 2)
        ctx.save_manifest()

    ctx.manifest.timings["total_s"] = round(time.time() - started, 2)
    ctx.manifest.status = STATUS_COMPLETE
    write_catalog(root)
    ctx.save_manifest()
    return root
