"""Running the job on several processes: ``torchrun --nproc-per-node N -m precompute ...`` (one node or several) or
SLURM ``srun`` (one task per GPU), with torch.distributed.

Every rank runs the same stages over the same run folder (a filesystem every node sees). A stage's work items
(chunks of pairs, (condition group, chunk) pairs of the ablation pass, chunks of patching inputs) are dealt out by
index (``items[rank::world]``, :meth:`World.share`); each rank writes its own atomic parts, so the parts on disk are
the ones a single process writes. Rank 0 alone takes the run folder's lock, merges the parts once every rank is
done, and writes the manifest; the store is the single-process store.

No rank waits without a deadline: while a rank waits (for the others to finish a stage, or for rank 0 to merge) it
watches every rank's heartbeat in the process group's key-value store, and stops with a message of its own when a
rank has been silent for :data:`DEAD_AFTER_S` seconds (killed, out of memory, its node lost) or has reported an
error. Rerunning the same command resumes from the parts on disk.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

HEARTBEAT_S = 2.0  # how often a rank says it is alive
DEAD_AFTER_S = float(os.environ.get("ATLAS_DEAD_AFTER_S", "60"))  # silence after which a rank counts as gone
POLL_S = 0.5


class RankFailure(RuntimeError):
    """Another rank failed or went silent (message is one line, for the CLI)."""


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank, the number of ranks, its GPU on the node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "World":
        """torchrun's RANK / WORLD_SIZE / LOCAL_RANK, else SLURM's SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID (with
        MASTER_ADDR and MASTER_PORT set by the batch script), else one process."""
        env = os.environ if environ is None else environ
        if "RANK" in env and "WORLD_SIZE" in env:
            return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
        if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
            return cls(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", "0")))
        return cls()

    def share(self, items: list) -> list:
        """This rank's items: every ``size``-th one from its rank on (the same split on every rerun)."""
        return items[self.rank :: self.size]


class Coordinator:
    """Barriers with deadlines and heartbeats over the process group's store (a single process needs none)."""

    def __init__(self, world: World):
        self.world = world
        self.store: Any = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # -- set-up ------------------------------------------------------------------------------------------------
    def start(self, device: str) -> None:
        if not self.world.distributed:
            return
        import datetime

        import torch.distributed as dist

        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise RankFailure("several ranks need MASTER_ADDR and MASTER_PORT (torchrun sets them; under srun export "
                              "them in the batch script, see the README)")
        os.environ.setdefault("RANK", str(self.world.rank))
        os.environ.setdefault("WORLD_SIZE", str(self.world.size))
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", rank=self.world.rank,
                                world_size=self.world.size, timeout=datetime.timedelta(seconds=DEAD_AFTER_S * 5))
        from torch.distributed.distributed_c10d import _get_default_store

        self.store = _get_default_store()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()

    def close(self) -> None:
        self._stop.set()
        if self.world.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def _heartbeat(self) -> None:
        while not self._stop.is_set():
            try:
                self.store.set(f"heartbeat/{self.world.rank}", repr(time.time()))
            except Exception:  # the store is gone (its host rank died): the next wait says so
                return
            self._stop.wait(HEARTBEAT_S)

    # -- signals -------------------------------------------------------------------------------------------------
    def fail(self, message: str) -> None:
        """Tell every rank that this one failed (they stop at their next wait)."""
        if self.world.distributed and self.store is not None:
            try:
                self.store.set("failed", f"rank {self.world.rank}: {message}")
            except Exception:
                pass

    def wait(self, name: str, *, leader_only: bool = False) -> None:
        """Arrive at barrier ``name`` and wait for every rank (``leader_only``: wait for rank 0's arrival only),
        raising RankFailure when a rank fails or falls silent."""
        if not self.world.distributed:
            return
        try:
            self.store.set(f"at/{name}/{self.world.rank}", "1")
        except Exception as err:
            raise RankFailure(f"rank 0 (the store's host) is gone ({type(err).__name__}); rerun the same command to "
                              "resume") from err
        expected = [0] if leader_only else range(self.world.size)
        keys = [f"at/{name}/{r}" for r in expected]
        while True:
            try:
                if self.store.check(["failed"]):
                    raise RankFailure(f"stopping: {self.store.get('failed').decode()}; rerun the same command to resume")
                if self.store.check(keys):
                    return
                self._check_heartbeats()
            except RankFailure:
                raise
            except Exception as err:  # connection refused or reset: the store's host (rank 0) died
                raise RankFailure(f"lost contact with rank 0 while waiting at {name} ({type(err).__name__}); rerun the "
                                  "same command to resume") from err
            time.sleep(POLL_S)

    def _check_heartbeats(self) -> None:
        now = time.time()
        for r in range(self.world.size):
            key = f"heartbeat/{r}"
            if not self.store.check([key]):
                continue  # not started yet: counted from its first beat
            silent = now - float(self.store.get(key).decode())
            if silent > DEAD_AFTER_S:
                raise RankFailure(f"rank {r} has been silent for {silent:.0f} s (killed or lost); stopping: rerun the "
                                  "same command to resume from the parts on disk")
