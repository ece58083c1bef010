"""Everything a stage works with, in one object: the run's settings, model, dataset, pairs, writer, manifest
and console. A stage takes a :class:`RunContext` and nothing else, so its signature never grows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: the context is built by precompute.job, which imports the stages
    from precompute.config import JobConfig
    from precompute.console import Console
    from precompute.datasets import Dataset
    from precompute.distributed import Coordinator, World
    from precompute.families.loading import LoadedModel
    from precompute.pairs import PairSet
    from precompute.store.manifest import Manifest
    from precompute.store.writer import RunWriter


@dataclass
class RunContext:
    cfg: "JobConfig"
    lm: "LoadedModel"
    ds: "Dataset"
    pair_set: "PairSet"
    writer: "RunWriter"
    manifest: "Manifest"
    console: "Console"
    world: "World" = None  # type: ignore[assignment]  # this process among the job's ranks (one by default)
    coordinator: "Coordinator" = None  # type: ignore[assignment]  # barriers with deadlines between the ranks
    computed: dict[str, int | None] = field(default_factory=dict)  # stage -> units this job computed (0: all there;
    # None: computed, not counted)

    def __post_init__(self):
        from precompute.distributed import Coordinator, World

        self.world = self.world or World()
        self.coordinator = self.coordinator or Coordinator(self.world)

    def save_manifest(self) -> None:
        """Write the manifest as it stands (atomically; rank 0 only): after each stage, and before parts whose
        numbers it fixes."""
        if self.world.leader:
            self.writer.write_manifest(self.manifest)
