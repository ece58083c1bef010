"""The one shape every stage has: check what exists, compute what is missing, merge, record.

* ``wanted``: does this run ask for the stage at all (``--ablations none`` does not)?
* ``verify``: every finished table the stage reads (``needs``) or left (``tables``) is what was written
  (page checksums, row counts, statistics: :mod:`precompute.store.integrity`). A damaged table the stage can
  derive again (``rebuildable``) is deleted with a log line and rebuilt; any other is named in a one-line
  StoreError saying what to do (``way_out``). Nothing damaged is ever merged or trusted.
* ``check``: refuse a request that contradicts what the folder holds (one-line StoreError), before any work.
* ``done``: are its finished tables all in the run folder? Then ``compute`` and ``merge`` are skipped.
* ``compute``: write the missing parts (resumable: a part on disk is never computed again).
* ``merge``: turn the parts into finished tables, atomically.
* ``record``: write the stage's manifest section from the finished tables. It runs every time, so a
  manifest rebuilt after a crash or a deletion says the same as one written in a single run.

With several ranks (:mod:`precompute.distributed`) every rank computes its share of the work items
(``ctx.world.share``); rank 0 alone verifies, merges and records, and the ranks meet at barriers with deadlines.

Adding a stage is one module with a :class:`Stage` subclass plus one entry in ``precompute.stages.STAGES``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from precompute.stages.context import RunContext


class Stage:
    name: str = ""
    tables: tuple[str, ...] = ()  # the finished tables the stage leaves in the run folder
    optional: tuple[str, ...] = ()  # tables it leaves for some models only (verified when present)
    needs: tuple[str, ...] = ()  # finished tables of earlier stages it reads
    rebuildable: tuple[str, ...] = ()  # its tables it derives again from other data when one is damaged
    sharded: bool = False  # True: every rank computes its share of the work items; False: rank 0 computes alone

    def wanted(self, ctx: "RunContext") -> bool:
        return True

    def way_out(self, table: str) -> str:
        """What the user does about a damaged table the stage cannot rebuild."""
        return f"delete it and rerun the same command to compute the {self.name} stage again, or restore it from a copy"

    def verify(self, ctx: "RunContext") -> None:
        from precompute.store.writer import CorruptTable, StoreError

        writer = ctx.writer
        for table in self.needs:
            if writer.has_table(table):
                try:
                    writer.check_table(table)
                except CorruptTable as err:
                    raise StoreError(f"{err}; the {self.name} stage reads it: delete it and rerun the same command") from err
        for table in (*self.tables, *self.optional):
            if not writer.has_table(table):
                continue
            try:
                writer.check_table(table)
            except CorruptTable as err:
                if table not in self.rebuildable:
                    raise StoreError(f"{err}; {self.way_out(table)}") from err
                writer.drop_corrupt_table(table, str(err), f"by the {self.name} stage")

    def check(self, ctx: "RunContext") -> None:
        """Nothing to refuse by default."""

    def done(self, ctx: "RunContext") -> bool:
        return all(ctx.writer.has_table(t) for t in self.tables)

    def compute(self, ctx: "RunContext") -> int | None:
        """Returns how many units (pairs, scorings) this job computed, for the manifest; None when not counted."""
        raise NotImplementedError

    def merge(self, ctx: "RunContext") -> None:
        """Parts -> finished tables; stages that write whole tables in ``compute`` have nothing to merge."""

    def record(self, ctx: "RunContext") -> None:
        raise NotImplementedError

    def run(self, ctx: "RunContext") -> None:
        if not self.wanted(ctx):
            return
        leader, meet = ctx.world.leader, ctx.coordinator.wait
        if leader:  # verification may delete a damaged table: one rank decides
            self.verify(ctx)
        meet(f"{self.name}/verified", leader_only=True)
        self.check(ctx)
        ctx.computed[self.name] = 0
        finished = self.done(ctx)
        meet(f"{self.name}/decided")  # every rank read the folder before any rank writes to it
        if not finished:
            if self.sharded or leader:
                ctx.computed[self.name] = self.compute(ctx)
            meet(f"{self.name}/computed")  # every rank's parts are on disk
            if leader:
                self.merge(ctx)
        meet(f"{self.name}/merged", leader_only=True)
        if leader:
            self.record(ctx)
