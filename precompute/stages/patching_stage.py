"""The patching stage (``--patching tfc1,tfc2,stmc1,cls``): activation-patching effects of every site (layer x
component x segment, layer x head; :mod:`precompute.analyses.patching`), exact and/or to first order
(:mod:`precompute.analyses.attribution`), and their robust summaries (:mod:`precompute.analyses.patching_ranking`):
tables ``patching_pairs``, ``patching_effects`` and ``patching_summary``.

Each experiment's inputs are built from the run's pairs (deterministically: the term, filler and related-word rules,
the per-query draws seeded by the run's seed) and cut into chunks of ``--chunk-size`` inputs; each chunk's rows of
one method are one resumable part. With ``--patching-method both`` every rank first computes its attribution parts;
once every rank has, each reads all of them and picks the same top heads (attribution's ratio of sums, lower bound),
which are then patched exactly. Experiments already in the folder are kept (a rerun with another experiment adds it);
one computed with another method or score scale is refused rather than mixed.
"""

from __future__ import annotations

from precompute import crash
from precompute.stages.base import Stage
from precompute.store.manifest import PatchingInfo, TableInfo
from precompute.store.sql import literal

PAIRS, EFFECTS, SUMMARY = "patching_pairs", "patching_effects", "patching_summary"


def inputs(ctx, experiment: str):
    """(the experiment's input pairs, run pairs drawn but left out)."""
    from precompute.analyses.patching_inputs import experiment_inputs

    return experiment_inputs(experiment, ctx.lm, ctx.pair_set.pairs, ctx.cfg.max_length,
                             per_query=ctx.cfg.patching_pairs, seed=ctx.cfg.seed)


def summary_settings(ctx):
    """The summaries' settings of this job (--patching-min-delta or its scale's default, the run's seed)."""
    from precompute.analyses.patching import EPSILON
    from precompute.analyses.patching_ranking import MIN_DELTA, SummarySettings

    cfg = ctx.cfg
    min_delta = cfg.patching_min_delta if cfg.patching_min_delta is not None else MIN_DELTA[cfg.patching_score]
    return SummarySettings(min_delta=min_delta, epsilon=EPSILON, seed=cfg.seed)


def _stored_experiments(writer) -> set[str]:
    if not writer.has_table(PAIRS):
        return set()
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    return set(pc.unique(pq.read_table(writer.table_path(PAIRS), columns=["experiment"]).column(0)).to_pylist())


def _with_queries(table, qid: dict[int, str]):
    """A patching_effects table of one experiment with each input's query (``qid``: patch_id -> qid) as a column."""
    import pyarrow as pa

    return table.append_column("qid", pa.array([qid[p] for p in table.column("patch_id").to_pylist()], pa.string()))


class Patching(Stage):
    name = "patching"
    sharded = True
    tables = (PAIRS, EFFECTS, SUMMARY)
    rebuildable = (SUMMARY,)  # derived from patching_effects (merge derives it again when it is missing)

    def wanted(self, ctx) -> bool:
        return bool(ctx.cfg.patching)

    def check(self, ctx) -> None:
        from precompute.analyses.patching import PatchingError, check_pooling

        if "cls" in ctx.cfg.patching:
            check_pooling(ctx.lm)
        info = ctx.manifest.patching
        stored = _stored_experiments(ctx.writer)
        if info is None or not stored:
            return
        if info.score not in (None, ctx.cfg.patching_score):
            raise PatchingError(f"this run folder's patching effects are on the {info.score or 'pairs.score'} scale, "
                                f"not {ctx.cfg.patching_score}; pass --patching-score {info.score} or another --out")
        for experiment in sorted(stored & set(ctx.cfg.patching)):
            method = info.methods.get(experiment, "exact")
            if method != ctx.cfg.patching_method:
                raise PatchingError(f"experiment {experiment} is stored with --patching-method {method}; pass it again, "
                                    "or use another --out to compute it with another method")

    def done(self, ctx) -> bool:
        return super().done(ctx) and set(ctx.cfg.patching) <= _stored_experiments(ctx.writer)

    def compute(self, ctx) -> int:
        from precompute.analyses import patching

        cfg, writer = ctx.cfg, ctx.writer
        done = _stored_experiments(writer)
        writer.verify_parts(EFFECTS)  # a damaged part is deleted (and computed again below), never merged
        total = 0
        layers, heads = ctx.lm.shape
        for experiment in (e for e in cfg.patching if e not in done):
            items, skipped = inputs(ctx, experiment)
            method = cfg.patching_method
            first = "exact" if method == "exact" else "attribution"
            sites = patching.all_sites(experiment, layers, heads)
            skip = f" ({skipped:,} drawn run pairs left out: no aligned inputs)" if skipped else ""
            ctx.console.log(f"Patching {experiment}: {len(items):,} input pairs{skip}, {len(sites)} patched activations "
                            f"each, {'exactly' if first == 'exact' else 'to first order'}"
                            f"{f'; then the top {cfg.patching_top} heads exactly' if method == 'both' else ''}.")
            total += self._pass(ctx, experiment, first, items, sites)
            if method == "both":
                ctx.coordinator.wait(f"{self.name}/{experiment}/attributed")  # every rank's attribution parts are on disk
                top = self._top_heads(ctx, experiment, items)
                self._pass(ctx, experiment, "exact", items, [(layer, patching.Variant("head", patching.segments_of(
                    experiment)[0], head)) for layer, head in top])
        return total

    def _pass(self, ctx, experiment: str, method: str, items, sites) -> int:
        """Compute this rank's missing parts of one method; returns the input pairs it computed."""
        from precompute.analyses import patching_methods

        cfg, writer = ctx.cfg, ctx.writer
        chunks = ctx.world.share([(f"{experiment}-{method}-{i // cfg.chunk_size:06d}", items[i : i + cfg.chunk_size])
                                  for i in range(0, len(items), cfg.chunk_size)])
        todo = [(key, chunk) for key, chunk in chunks if not writer.has_part(EFFECTS, key)]
        n = sum(len(c) for _, c in chunks)
        with ctx.console.bar(n, f"patching {experiment} ({method})", "pair") as bar:
            bar.update(n - sum(len(c) for _, c in todo))
            for key, chunk in todo:
                table = patching_methods.run_chunk(
                    ctx.lm, experiment, method, chunk, sites, batch_size=cfg.batch_size, max_length=cfg.max_length,
                    batch_tokens=cfg.batch_tokens, scale=cfg.patching_score,
                    graddrop=cfg.patching_graddrop and method == "attribution", on_batch=bar.update)
                writer.write_part(EFFECTS, key, table)
                crash.point("patching.part")
        return sum(len(c) for _, c in todo)

    def _top_heads(self, ctx, experiment: str, items) -> list[tuple[int, int]]:
        """The --patching-top heads by attribution's ratio of sums (lower bound), from every attribution part."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from precompute.analyses.patching_ranking import rows_of, summary_columns

        parts = [p for p in ctx.writer.part_paths(EFFECTS) if p.stem.startswith(f"{experiment}-attribution-")]
        table = pa.concat_tables([pq.read_table(p) for p in parts])
        table = table.filter(pa.compute.equal(table.column("component"), "head"))
        summary = summary_columns(rows_of(_with_queries(table, {i.patch_id: i.qid for i in items})),
                                  summary_settings(ctx))
        order = sorted(range(len(summary["rank"])), key=lambda i: int(summary["rank"][i]))
        return sorted((int(summary["layer"][i]), int(summary["head"][i])) for i in order[: ctx.cfg.patching_top])

    def merge(self, ctx) -> None:
        """The old tables' other experiments + the parts -> the three tables, installed in one commit."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        writer = ctx.writer
        writer.verify_parts(EFFECTS)
        built = {experiment: inputs(ctx, experiment)[0] for experiment in ctx.cfg.patching}
        rows = [item.row() | {"qid": item.qid} for items in built.values() for item in items]
        if writer.has_table(PAIRS):  # experiments of earlier jobs stay
            old = pq.read_table(writer.table_path(PAIRS)).to_pylist()
            rows = [r for r in old if r["experiment"] not in ctx.cfg.patching] + rows
        committed = [PAIRS, SUMMARY]
        effects = writer.table_path(EFFECTS)
        if writer.part_paths(EFFECTS):  # else only the summary was missing: it is derived again from the table
            keep = ", ".join(literal(e) for e in ctx.cfg.patching)
            pieces = ["SELECT * FROM parts_effects"]
            sources = {"effects": writer.root / "_parts" / EFFECTS}
            if writer.has_table(EFFECTS):
                sources["old"] = writer.table_path(EFFECTS)
                pieces.insert(0, f"SELECT * FROM parts_old WHERE experiment NOT IN ({keep})")
            effects = writer.merge_parts(EFFECTS, select_sql=" UNION ALL BY NAME ".join(f"({p})" for p in pieces),
                                         sources=sources, staged=True)
            committed.insert(0, EFFECTS)
        writer.write_table(PAIRS, pa.Table.from_pylist(rows), staged=True)
        writer.write_table(SUMMARY, self._summary(ctx, effects, rows), staged=True)
        writer.commit(self.name, committed, drop_parts=[EFFECTS])

    def _summary(self, ctx, effects_path, pair_rows):
        """patching_summary of every experiment and method in the (staged) patching_effects."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from precompute.analyses.patching_ranking import columns_table, rows_of, summary_columns

        table = pq.read_table(effects_path)
        out = []
        for experiment in sorted(set(table.column("experiment").to_pylist())):
            part = table.filter(pa.compute.equal(table.column("experiment"), experiment))
            qid = {r["patch_id"]: r["qid"] for r in pair_rows if r["experiment"] == experiment}
            out.append(columns_table(summary_columns(rows_of(_with_queries(part, qid)), summary_settings(ctx))))
        return pa.concat_tables(out)

    def record(self, ctx) -> None:
        import duckdb
        import pyarrow.parquet as pq

        from precompute.analyses import patching
        from precompute.statistics import CI_LEVEL

        writer, cfg = ctx.writer, ctx.cfg
        path = literal(writer.table_path(EFFECTS))
        counts = duckdb.sql(f"SELECT experiment, count(DISTINCT patch_id), count(*) - count(effect) "
                            f"FROM read_parquet({path}) GROUP BY 1 ORDER BY 1").fetchall()
        exact_heads = duckdb.sql(f"SELECT experiment, list(DISTINCT format('{{}}.{{}}', layer, head) ORDER BY 1) "
                                 f"FROM read_parquet({path}) WHERE method = 'exact' AND component = 'head' "
                                 f"GROUP BY 1").fetchall()
        old = ctx.manifest.patching or PatchingInfo()
        settings = summary_settings(ctx)
        methods = {**old.methods, **{e: cfg.patching_method for e in cfg.patching}}
        ctx.manifest.patching = PatchingInfo(
            experiments=[e for e, _, _ in counts],
            pairs={e: n for e, n, _ in counts},
            skipped={e: inputs(ctx, e)[1] if e in cfg.patching else old.skipped.get(e, 0) for e, _, _ in counts},
            null_effects={e: n for e, _, n in counts},
            epsilon=patching.EPSILON,
            pairs_per_query=cfg.patching_pairs,
            score=cfg.patching_score,
            methods={e: methods.get(e, cfg.patching_method) for e, _, _ in counts},
            top=cfg.patching_top,
            exact_heads={e: heads for e, heads in exact_heads if methods.get(e) == "both"},
            graddrop=cfg.patching_graddrop,
            min_delta=settings.min_delta,
            resamples=settings.n_resamples,
            seed=settings.seed,
            level=CI_LEVEL,
        )
        for name in self.tables:
            ctx.manifest.tables[name] = TableInfo(rows=pq.ParquetFile(writer.table_path(name)).metadata.num_rows)


STAGE = Patching()
