"""The ablation stage: re-score every pair under the requested conditions the run folder lacks, then (re)write
``ablation_conditions``, ``ablation_scores``, ``ablation_metrics`` and ``ablation_summary``.

Storage. Scores go to ``_parts/ablation_scores/c<chunk>-<hash>.parquet``, one part per (chunk, group of
conditions sharing forwards), written atomically; condition definitions to ``_parts/ablation_conditions``
before any score, so a folder never holds scores it cannot describe. A rerun reads which (condition, chunk)
the parts hold (damaged parts are deleted and computed again) and computes only the rest
(:mod:`precompute.analyses.ablations` is the pass). When every requested condition is complete, the four tables are
rebuilt (the conditions of earlier runs are kept) and installed in one atomic commit
(:mod:`precompute.stages.ablation_folder`): they always describe the same conditions.

Kernel and stack fix the numbers of every score, so a folder keeps the ones it was started with.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from precompute import crash
from precompute.conditions import AblationRequest, Condition, forward_groups
import precompute.stages.ablation_folder as folder
from precompute.stages.ablation_folder import CONDITIONS, EFFECTS, QUERY_METRICS, SCORES, SUBSPACE, SUMMARY
from precompute.stages.base import Stage
from precompute.store.manifest import AblationsInfo, TableInfo
from precompute.store.sql import literal
from precompute.store.writer import StoreError


def _kernel(ctx) -> str:
    """The kernel this run's ablations use (--ablation-kernel auto resolved for the model)."""
    from precompute.analyses.ablations import resolve_kernel

    return resolve_kernel(ctx.lm, ctx.cfg.ablation_kernel)


def _subspace_heads(ctx, request: AblationRequest) -> list[tuple[int, int]]:
    """The heads of the 'subspace' set: those listed, or the top N by the query-level effect of q_d, relevant vs easy
    negatives (d_z; the mean per-query difference breaks ties and ranks alone where d_z is undefined: one query)."""
    from precompute.conditions.subspace_specs import ALIGNED_KIND, SUBSPACE_KIND

    if not {SUBSPACE_KIND.condition_set, ALIGNED_KIND.condition_set} & set(request.asked_sets()):
        return []
    target = request.subspace_targets()
    if isinstance(target, list):
        return target
    if not ctx.writer.has_table("head_contrasts"):
        raise StoreError(f"--subspace-heads top:{target} ranks heads in head_contrasts, which this run lacks (it needs "
                         "relevant pairs and easy negatives); name the heads instead, e.g. --subspace-heads 3.5,4.1")
    return top_heads(ctx.writer.table_path("head_contrasts"), target)


def top_heads(head_contrasts: Path, n: int) -> list[tuple[int, int]]:
    """The ``n`` heads of ``--subspace-heads top:N``: largest lower bound of the query-level effect of TOP_METRIC in
    TOP_CONTRAST (a bound, not d_z, so that a head whose differences barely vary over a few queries cannot rank first
    on a near-zero sd)."""
    import duckdb

    from precompute.conditions.subspace_specs import TOP_CONTRAST, TOP_METRIC

    rows = duckdb.sql(f"SELECT layer, head FROM read_parquet({literal(head_contrasts)}) WHERE contrast = "
                      f"'{TOP_CONTRAST}' AND metric = '{TOP_METRIC}' AND effect IS NOT NULL "
                      f"ORDER BY effect_low DESC NULLS LAST, effect DESC, layer, head LIMIT {int(n)}")
    return [(int(layer), int(head)) for layer, head in rows.fetchall()]


def _alignments(lm):
    """(layer, head, n) -> the alignments u_k . v_k of the n components an aligned subspace condition removes, read
    from the weights (each head's factors computed once)."""
    from precompute.analyses.subspace import aligned_components, head_factors

    factors = {}

    def alignments(layer: int, head: int, n: int) -> tuple[float, ...]:
        if (layer, head) not in factors:
            factors[(layer, head)] = head_factors(lm, layer, head)
        f = factors[(layer, head)]
        return tuple(float(f.alignment[k]) for k in aligned_components(f, n))

    return alignments


def conditions_of(ctx) -> tuple[list[Condition], list[Condition]]:
    """(the conditions the run asks for and can have, those refused: they remove only directions a causal model
    cannot attend, so they would change nothing and only dilute their Holm family)."""
    from precompute.names import CAUSAL_IMPOSSIBLE

    request = AblationRequest.from_config(ctx.cfg)
    every = request.conditions(*ctx.lm.shape, subspace_heads=_subspace_heads(ctx, request), head_dim=ctx.lm.head_dim,
                               alignments=_alignments(ctx.lm))
    if not ctx.lm.family.causal:
        return every, []
    impossible = [c for c in every if c.directions and set(c.directions) <= CAUSAL_IMPOSSIBLE]
    return [c for c in every if c not in impossible], impossible


def _means(ctx, conditions: Sequence[Condition]):
    """The run's component means [layers, 2, 5, hidden] when ``conditions`` hold a mean-mode component condition."""
    if not any(c.spec.uses_means(c) for c in conditions):
        return None
    import pyarrow.parquet as pq

    from precompute.analyses.component_means import means_tensor

    return means_tensor(pq.read_table(ctx.writer.table_path("component_means")), ctx.lm.shape[0])


def _check_definitions(requested: Sequence[Condition], known: dict[str, dict]) -> None:
    for c in requested:
        old = known.get(c.condition_id)
        if old is not None and old["directions"] != c.row()["directions"]:
            raise ValueError(
                f"condition {c.condition_id} was computed in this run folder with directions {old['directions']}, "
                f"now {c.row()['directions']}; give the group another name (--ablation-group NAME=...)"
            )


def _check_settings(ctx, kernel: str, stack: int) -> None:
    old = ctx.manifest.ablations
    if old is None or not (ctx.writer.has_table(SCORES) or ctx.writer.part_paths(SCORES)):
        return
    for key, value, flag in (("kernel", kernel, "--ablation-kernel"), ("stack", stack, "--ablation-stack")):
        before = getattr(old, key)
        if before is not None and before != value:
            raise StoreError(
                f"{flag} {value} differs from the ablations already in this folder ({before}); "
                f"pass {flag} {before}, another --out, or delete that folder"
            )


class Ablations(Stage):
    name = "ablations"
    sharded = True
    tables = (CONDITIONS, SCORES, QUERY_METRICS, SUMMARY)
    optional = (EFFECTS,)  # with subspace conditions
    needs = ("pairs",)
    rebuildable = (CONDITIONS, QUERY_METRICS, SUMMARY, EFFECTS)  # from the scores, the known definitions, the head metrics

    def way_out(self, table: str) -> str:
        return ("delete it and rerun the same command to score its conditions again (conditions this command does "
                "not ask for are dropped), or restore it from a copy")

    # -- what is asked for -------------------------------------------------------------------------
    @staticmethod
    def requested(ctx) -> list[Condition]:
        return conditions_of(ctx)[0]

    @staticmethod
    def settings(ctx) -> tuple[list[str], list[str]]:
        """(measures, scopes) the metric tables must cover: this job's plus those the folder already has."""
        from precompute.analyses import significance

        old = ctx.manifest.ablations or AblationsInfo()
        held_measures, held_scopes = folder.stored_settings(ctx.writer)
        measures = list(dict.fromkeys([*old.measures, *held_measures, *ctx.cfg.measures]))
        scopes = significance.resolve_scopes(ctx.cfg.eval_scopes, ctx.cfg.candidates)
        scopes = [s for s in significance.SCOPES if s in {*old.scopes, *held_scopes, *scopes}]
        return measures, scopes

    def wanted(self, ctx) -> bool:
        return bool(ctx.cfg.ablations) and bool(self.requested(ctx))

    def check(self, ctx) -> None:
        if not ctx.writer.has_table("pairs"):
            raise StoreError("the ablations stage needs the pairs table of the summary pass; run the summaries stage first")
        _check_settings(ctx, _kernel(ctx), max(1, int(ctx.cfg.ablation_stack)))
        _check_definitions(self.requested(ctx), folder.known_definitions(ctx.writer))

    def done(self, ctx) -> bool:
        writer = ctx.writer
        if not super().done(ctx) or writer.part_paths(SCORES) or writer.part_paths(CONDITIONS):
            return False
        computed = folder.computed(writer)
        if not {c.condition_id for c in self.requested(ctx)} <= computed:
            return False
        return folder.consistent(writer, computed, *self.settings(ctx))

    # -- the shape ---------------------------------------------------------------------------------
    def compute(self, ctx) -> int:
        import numpy as np
        import pyarrow as pa

        from precompute.analyses import ablations
        from precompute.analyses.batching import chunked

        cfg, lm, writer, pairs = ctx.cfg, ctx.lm, ctx.writer, ctx.pair_set.pairs
        requested = self.requested(ctx)
        kernel, stack = _kernel(ctx), max(1, int(cfg.ablation_stack))
        known = folder.known_definitions(writer)
        computed = folder.computed(writer)
        todo = [c for c in requested if c.condition_id not in computed]
        if not todo:
            return 0
        # kernel and stack fix the numbers of every part: record them before the first part is written
        ctx.manifest.ablations = ctx.manifest.ablations or AblationsInfo()
        ctx.manifest.ablations.kernel, ctx.manifest.ablations.stack = kernel, stack
        ctx.save_manifest()
        crash.point("ablations.settings")
        pending = [c for c in todo if c.condition_id not in known]
        if pending and ctx.world.leader:  # definitions first, so a folder never holds scores it cannot describe
            writer.write_part(CONDITIONS, folder.part_key("defs", [c.condition_id for c in pending]),
                              pa.Table.from_pylist([c.row() for c in pending]))
            crash.point("ablations.definitions")
        ctx.coordinator.wait("ablations/definitions", leader_only=True)
        done = folder.done_in_parts(writer)
        chunks = list(chunked(pairs, cfg.chunk_size))
        work = ctx.world.share([(group, key, chunk) for group in forward_groups(todo, stack) for key, chunk in chunks])
        total = sum(len(chunk) * len(group) for group, _, chunk in work)
        left = sum(len(chunk) * sum((c.condition_id, key) not in done for c in group) for group, key, chunk in work)
        means = _means(ctx, todo)
        # kinds differ in cost (a subspace condition runs the summary kernel): one timed batch per kind left
        left_by_kind: Counter[str] = Counter()
        for group, key, chunk in work:
            for c in group:
                if (c.condition_id, key) not in done:
                    left_by_kind[c.kind] += len(chunk)
        first_of_kind = {c.kind: c for c in reversed(todo)}
        seconds = sum(n * ablations.seconds_per_scoring(lm, pairs, first_of_kind[kind], batch_size=cfg.batch_size,
                                                        max_length=cfg.max_length, batch_tokens=cfg.batch_tokens,
                                                        kernel=kernel, means=means)
                      for kind, n in left_by_kind.items())
        ctx.console.log(
            f"Ablation pass: {len(todo)} of {len(requested)} requested conditions to compute ({len(requested) - len(todo)} "
            f"already in the folder) x {len(pairs):,} pairs: {left:,} scorings left (kernel {kernel}, "
            f"{stack} condition(s) per forward, on {lm.device}), estimated {seconds / 60:.1f} min.")
        with ctx.console.bar(total, "ablations", "scoring") as bar:
            bar.update(total - left)
            for group, key, chunk in work:
                missing = [c for c in group if (c.condition_id, key) not in done]
                if not missing:
                    continue
                head_metrics = {} if any(c.spec.measures_head for c in missing) else None
                scores = ablations.score_conditions(lm, chunk, missing, batch_size=cfg.batch_size,
                                                   max_length=cfg.max_length, batch_tokens=cfg.batch_tokens,
                                                   kernel=kernel, means=means,
                                                   head_metrics=head_metrics, on_batch=bar.update)
                ids = [p.pair_id for p in chunk]
                part = folder.part_key(key, [c.condition_id for c in missing])
                if head_metrics:  # before the scores: a score part present means its chunk is complete
                    writer.write_part(SUBSPACE, part, folder.subspace_rows(missing, ids, head_metrics))
                writer.write_part(SCORES, part, pa.table({
                    "condition_id": [c.condition_id for c in missing for _ in ids],
                    "pair_id": pa.array(ids * len(missing), pa.int32()),
                    "score": pa.array(np.concatenate([scores[c.condition_id] for c in missing]), pa.float32()),
                }))
                crash.point("ablations.part")
        return len(todo)

    def merge(self, ctx) -> None:
        """Completed parts + the finished scores -> the four tables, in one commit, when anything changed or the
        tables disagree (a folder an older version left half-merged); then the merged parts go."""
        from precompute.analyses.batching import chunked

        writer, requested = ctx.writer, self.requested(ctx)
        chunk_keys = {key for key, _ in chunked(ctx.pair_set.pairs, ctx.cfg.chunk_size)}
        computed = folder.computed(writer)
        new = folder.complete_in_parts(writer, chunk_keys) - computed
        ids = computed | new
        lacking = {c.condition_id for c in requested} - ids
        if lacking:
            raise RuntimeError(f"ablation scores missing after the pass: {sorted(lacking)[:5]}")
        definitions = {**folder.known_definitions(writer), **{c.condition_id: c.row() for c in requested}}
        if ids - set(definitions):
            raise StoreError(f"ablation_scores holds conditions without a definition ({sorted(ids - set(definitions))[:3]}); "
                             "delete the ablation_* tables and rerun")
        measures, scopes = self.settings(ctx)
        if new or not folder.consistent(writer, ids, measures, scopes):
            folder.commit_tables(writer, ctx.ds, ctx.pair_set, new, ids, definitions, measures, scopes)
        folder.clean_parts(writer, ids)

    def record(self, ctx) -> None:
        import pyarrow.parquet as pq

        from precompute.analyses import significance

        writer, cfg = ctx.writer, ctx.cfg
        rows = pq.read_table(writer.table_path(CONDITIONS)).to_pylist()
        kinds: dict[str, int] = {}
        for row in rows:
            kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
        measures, scopes = self.settings(ctx)
        request = AblationRequest.from_config(cfg)
        old = ctx.manifest.ablations or AblationsInfo()
        requested, refused = conditions_of(ctx)
        families = significance.holm_families(writer.table_path(SUMMARY))
        ctx.manifest.ablations = AblationsInfo(
            kernel=old.kernel or _kernel(ctx),
            stack=old.stack or max(1, int(cfg.ablation_stack)),
            conditions=sorted(r["condition_id"] for r in rows),
            counts=kinds,
            measures=measures,
            scopes=scopes,
            groups={r["condition"]: r["directions"].split(",") for r in rows if r["kind"] == "group"},
            last_request={**dataclasses.asdict(request), "requested": len(requested),  # tuples are written as lists
                          "computed_now": ctx.computed.get(self.name, 0)},
            holm_families=families,
            refused=[c.condition_id for c in refused],
        )
        ctx.manifest.tables.update({
            name: TableInfo(rows=pq.ParquetFile(writer.table_path(name)).metadata.num_rows)
            for name in (*self.tables, SUBSPACE, EFFECTS) if writer.has_table(name)
        })


STAGE = Ablations()
