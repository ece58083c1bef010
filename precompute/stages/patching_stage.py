"""The patching stage (``--patching tfc1,cls``): activation-patching effects of every layer x component x segment and
layer x head (:mod:`precompute.analyses.patching`), tables ``patching_pairs`` and ``patching_effects``.

Each experiment's input pairs are built from the run's pairs (deterministically: the tfc1 term and filler rules,
the cls draw seeded by the run's seed), cut into chunks of ``--chunk-size`` input pairs, and each chunk's effects are
one resumable part; experiments already in the folder are kept, so a rerun with another experiment adds it.
"""

from __future__ import annotations

from precompute import crash
from precompute.stages.base import Stage
from precompute.store.manifest import PatchingInfo, TableInfo
from precompute.store.sql import literal

PAIRS, EFFECTS = "patching_pairs", "patching_effects"


def inputs(ctx, experiment: str):
    """(the experiment's input pairs, pairs skipped for want of aligned inputs)."""
    from precompute.analyses import patching

    if experiment == "tfc1":
        return patching.tfc1_pairs(ctx.lm, ctx.pair_set.pairs, ctx.cfg.max_length)
    return patching.cls_pairs(ctx.pair_set.pairs, ctx.cfg.patching_pairs, ctx.cfg.seed), 0


def _stored_experiments(writer) -> set[str]:
    if not writer.has_table(PAIRS):
        return set()
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    return set(pc.unique(pq.read_table(writer.table_path(PAIRS), columns=["experiment"]).column(0)).to_pylist())


class Patching(Stage):
    name = "patching"
    sharded = True
    tables = (PAIRS, EFFECTS)

    def wanted(self, ctx) -> bool:
        return bool(ctx.cfg.patching)

    def check(self, ctx) -> None:
        from precompute.analyses.patching import check_pooling

        if "cls" in ctx.cfg.patching:
            check_pooling(ctx.lm)

    def done(self, ctx) -> bool:
        return super().done(ctx) and set(ctx.cfg.patching) <= _stored_experiments(ctx.writer)

    def compute(self, ctx) -> int:
        import pyarrow as pa

        from precompute.analyses import patching

        cfg, writer = ctx.cfg, ctx.writer
        done = _stored_experiments(writer)
        writer.verify_parts(EFFECTS)  # a damaged part is deleted (and computed again below), never merged
        total = 0
        for experiment in (e for e in cfg.patching if e not in done):
            items, skipped = inputs(ctx, experiment)
            chunks = ctx.world.share([(f"{experiment}-{i // cfg.chunk_size:06d}", items[i : i + cfg.chunk_size])
                                      for i in range(0, len(items), cfg.chunk_size)])  # this rank's chunks
            todo = [(key, chunk) for key, chunk in chunks if not writer.has_part(EFFECTS, key)]
            layers, heads = ctx.lm.shape
            per_pair = layers * len(patching.variants(experiment, heads))
            skip = f" ({skipped:,} run pairs skipped: no aligned term and filler)" if experiment == "tfc1" else ""
            ctx.console.log(f"Patching {experiment}: {len(items):,} input pairs{skip}, {per_pair} patched activations "
                            f"each; {sum(len(c) for _, c in todo):,} to run.")
            with ctx.console.bar(sum(len(c) for _, c in chunks), f"patching {experiment}", "pair") as bar:
                bar.update(sum(len(c) for _, c in chunks) - sum(len(c) for _, c in todo))
                for key, chunk in todo:
                    cols = patching.run_experiment(ctx.lm, experiment, chunk, batch_size=cfg.batch_size,
                                                   max_length=cfg.max_length, batch_tokens=cfg.batch_tokens,
                                                   on_batch=bar.update)
                    writer.write_part(EFFECTS, key, pa.table(cols))
                    crash.point("patching.part")
                    total += len(chunk)
        return total

    def merge(self, ctx) -> None:
        """The old tables' other experiments + the parts -> both tables, installed in one commit."""
        import pyarrow as pa

        writer = ctx.writer
        writer.verify_parts(EFFECTS)
        rows = []
        for experiment in ctx.cfg.patching:
            rows += [item.row() for item in inputs(ctx, experiment)[0]]
        if writer.has_table(PAIRS):  # experiments of earlier jobs stay
            import pyarrow.parquet as pq

            old = pq.read_table(writer.table_path(PAIRS)).to_pylist()
            rows = [r for r in old if r["experiment"] not in ctx.cfg.patching] + rows
        keep = ", ".join("'" + e + "'" for e in ctx.cfg.patching)
        pieces = ["SELECT * FROM parts_effects"]
        sources = {"effects": writer.root / "_parts" / EFFECTS}
        if writer.has_table(EFFECTS):
            sources["old"] = writer.table_path(EFFECTS)
            pieces.insert(0, f"SELECT * FROM parts_old WHERE experiment NOT IN ({keep})")
        writer.merge_parts(EFFECTS, select_sql=" UNION ALL ".join(f"({p})" for p in pieces), sources=sources,
                           staged=True)
        writer.write_table(PAIRS, pa.Table.from_pylist(rows), staged=True)
        writer.commit(self.name, [EFFECTS, PAIRS], drop_parts=[EFFECTS])

    def record(self, ctx) -> None:
        import duckdb

        from precompute.analyses import patching

        writer = ctx.writer
        counts = duckdb.sql(f"SELECT experiment, count(DISTINCT patch_id), count(*) - count(effect) "
                            f"FROM read_parquet({literal(writer.table_path(EFFECTS))}) GROUP BY 1 ORDER BY 1").fetchall()
        ctx.manifest.patching = PatchingInfo(
            experiments=[e for e, _, _ in counts],
            pairs={e: n for e, n, _ in counts},
            skipped={e: inputs(ctx, e)[1] for e, _, _ in counts},
            null_effects={e: n for e, _, n in counts},
            epsilon=patching.EPSILON,
            cls_pairs_per_query=ctx.cfg.patching_pairs,
        )
        for name in self.tables:
            import pyarrow.parquet as pq

            ctx.manifest.tables[name] = TableInfo(rows=pq.ParquetFile(writer.table_path(name)).metadata.num_rows)


STAGE = Patching()
