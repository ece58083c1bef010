"""The precompute job end to end: dataset -> pairs -> model -> stages -> store.

Every stage is idempotent against the run folder: a rerun of the same command skips what is
there (parts, finished tables) and ends with the same store, and a run folder is never reused
for different pairs or a different model (checked against its manifest and against the identity every
Parquet file of the folder carries, so deleting the manifest does not disable the check). Where each stage's work
happens: :mod:`precompute.stages` (one module per stage, run in order by :func:`run`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from precompute import crash
from precompute.config import JobConfig
from precompute.console import Console, first_line
from precompute.settings import identity_values, to_record
from precompute.store.manifest import (STATUS_COMPLETE, STATUS_RUNNING, Counts, DatasetInfo, Identity, Invocation, Manifest,
                                       ModelInfo)
from precompute.store.writer import RunWriter, StoreError, is_disk_full

PACKAGES = ("torch", "transformers", "ir_datasets", "ir_measures", "pyarrow", "duckdb", "numpy")


def run_folder(cfg: JobConfig, dataset_name: str) -> Path:
    if cfg.out is not None:
        return Path(cfg.out)
    return Path(cfg.store) / f"{dataset_name}__{Path(cfg.model.rstrip('/')).name}"


def identity_of(cfg: JobConfig, model_identity: str, ds) -> Identity:
    """What fixes the run's numbers: every setting declared part of the identity (precompute.config), with the model,
    the dataset, the candidate source and a PEFT adapter's base as resolved (an absolute folder or file, else the hub
    or ir_datasets id)."""
    from precompute.families.loading import base_identity
    from precompute.pairs import candidates_identity

    return Identity(**{**identity_values(cfg), "model": model_identity, "dataset": ds.source,
                       "candidates": candidates_identity(ds, cfg.candidates),
                       "base_model": base_identity(cfg.model, cfg.revision, cfg.base_model)})


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


def _ranks() -> int:
    from precompute.distributed import World

    return World.from_env().size


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def run(cfg: JobConfig) -> Path:
    """Run the job; returns the run folder. Raises DatasetError / ModelError / StoreError with one-line messages.

    Every check that can refuse the run (folder, identity, model, flags, max length) runs before the first pass.
    Under torchrun or srun (several ranks, :mod:`precompute.distributed`) every rank runs this; a rank that fails
    tells the others, which stop at their next barrier.
    """
    from precompute.allocator import use_system_pool
    from precompute.distributed import Coordinator, World

    use_system_pool()  # run from Python: cli.main, which loads nothing first, has already chosen the pool
    world = World.from_env()
    coordinator = Coordinator(world)
    try:
        return _run(cfg, world, coordinator)
    except BaseException as err:
        coordinator.fail(f"{type(err).__name__}: {first_line(err)}")
        raise
    finally:
        coordinator.close()


def _run(cfg: JobConfig, world, coordinator) -> Path:
    from precompute import checks, datasets, pairs as pairs_mod
    from precompute.families import loading
    from precompute.stages.context import RunContext

    started = time.time()
    cfg.check()  # a config built in code or from a manifest gets the CLI's checks
    console = Console(progress=cfg.progress, quiet=not world.leader)
    ds = datasets.resolve(cfg.dataset, Path(cfg.cache))
    root = run_folder(cfg, ds.name)
    checks.check_out_folder(root, ds, cfg.model)
    identity = identity_of(cfg, loading.identity(cfg.model), ds)
    writer = RunWriter(root, identity=identity.to_dict())
    local_rank = world.local_rank if world.distributed else None
    coordinator.start(loading.pick_device(cfg.device, local_rank))
    with _disk_full_names(root):
        if world.leader:  # the job's lock, the clean-up of a killed run and the identity checks: one rank
            writer.ensure_writable()
            check_same_run(writer.read_manifest(), identity)
            writer.check_identity(has_manifest=writer.read_manifest() is not None)
        coordinator.wait("job/ready", leader_only=True)
        previous = writer.read_manifest()

        lm = loading.load(cfg.model, cfg.device, cfg.dtype, template=cfg.prompt_template, answer_tokens=cfg.answer_tokens,
                          local_rank=local_rank, progress=cfg.progress and world.leader, revision=cfg.revision,
                          base_model=cfg.base_model, trust_remote_code=cfg.trust_remote_code)
        checks.check_model_settings(cfg, lm)
        checks.check_kernels(lm, cfg.max_length)
        pair_set = pairs_mod.build_pairs(
            ds, easy_negatives=cfg.easy_negatives, seed=cfg.seed, candidates=cfg.candidates,
            depth=cfg.depth, max_queries=cfg.max_queries, progress=cfg.progress and world.leader,
        )
        if not pair_set.pairs:
            raise StoreError(f"dataset {cfg.dataset!r} gave no pairs with text; check its qrels and docs")
        checks.check_pairs_fit(cfg, lm, pair_set)
        checks.check_probe_scores(cfg, lm, pair_set)
        manifest = _starting_manifest(cfg, lm, ds, pair_set, previous, identity)
        ctx = RunContext(cfg=cfg, lm=lm, ds=ds, pair_set=pair_set, writer=writer, manifest=manifest, console=console,
                         world=world, coordinator=coordinator)
        _run_stages(ctx, started)
    return root


def _starting_manifest(cfg, lm, ds, pair_set, previous: Manifest | None, identity: Identity) -> Manifest:
    """The manifest as the job starts: the previous one (sections of finished stages kept) with this job's facts,
    and this job appended to the invocations (a manifest of an older version gives its last job's timings as the
    first one)."""
    manifest = previous or Manifest()
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    history = list(manifest.invocations)
    if not history and manifest.timings:
        history.append(Invocation(status=manifest.status, timings=dict(manifest.timings)))
    this = Invocation(started=now, status=STATUS_RUNNING, settings=to_record(cfg))
    return dataclasses.replace(
        manifest,
        status=STATUS_RUNNING,
        identity=identity,
        created=manifest.created or now,
        timings=this.timings,  # one dict: the last job's timings are its invocation's
        invocations=[*history, this],
        model=ModelInfo.from_dict(lm.describe()),
        dataset=DatasetInfo(spec=cfg.dataset, name=ds.name, source=ds.source),
        parameters={**{k: v for k, v in identity.to_dict().items() if k not in ("model", "dataset")},
                    "device": lm.device, "dtype": lm.dtype, "ranks": _ranks()},
        counts=Counts(pairs=len(pair_set.pairs), queries=len(pair_set.queries), neg_type=pair_set.counts(),
                      skipped=pair_set.skipped, truncated=manifest.counts.truncated),
        versions=versions(),
    )


def _run_stages(ctx, started: float) -> None:
    from precompute.allocator import release
    from precompute.stages import STAGES
    from precompute.store.connect import write_catalog

    ctx.save_manifest()

    this = ctx.manifest.invocations[-1]
    for name in ctx.cfg.stages:
        t0 = time.time()
        STAGES[name].run(ctx)
        release()  # what the stage freed goes back to the OS, not under the next stage's peak (precompute.allocator)
        this.timings[f"{name}_s"] = round(time.time() - t0, 2)
        if name in ctx.computed:
            this.computed[name] = ctx.computed[name]
        crash.point("job.stage")
        ctx.save_manifest()

    this.timings["total_s"] = round(time.time() - started, 2)
    ctx.manifest.status = this.status = STATUS_COMPLETE
    if ctx.world.leader:
        write_catalog(ctx.writer.root)
        crash.point("job.catalog")
    ctx.save_manifest()
    ctx.coordinator.wait("job/complete", leader_only=True)  # every rank ends once the store is complete


@contextmanager
def _disk_full_names(root: Path):
    """A full disk (from Python, pyarrow or DuckDB's spill files) is a one-line error naming the folder; what was
    finished is kept (every file is renamed into place only once written whole)."""
    try:
        yield
    except Exception as err:
        if not is_disk_full(err):
            raise
        raise StoreError(f"no space left on the device of {root} ({first_line(err)}); free some space and "
                         "run the same command again: finished parts are kept") from err
