"""The ablation stage: re-score every pair under the requested conditions the run folder lacks, then (re)write
``ablation_conditions``, ``ablation_scores``, ``ablation_metrics`` and ``ablation_summary``.

Storage. Scores go to ``_parts/ablation_scores/c<chunk>-<hash>.parquet``, one part per (chunk, group of
conditions sharing forwards), written atomically; condition definitions to ``_parts/ablation_conditions``
before any score, so a folder never holds scores it cannot describe. A rerun reads which (condition, chunk)
the parts hold and computes only the rest (:mod:`precompute.ablation` is the pass). When every requested
condition is complete the parts are merged with the existing ``ablation_scores.parquet`` (the conditions of
earlier runs are kept), ``ablation_conditions`` is rewritten, and ``ablation_metrics`` / ``ablation_summary``
are recomputed (:mod:`precompute.significance`).

Kernel and stack fix the numbers of every score, so a folder keeps the ones it was started with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from precompute.conditions import AblationRequest, Condition, forward_groups
from precompute.stages.base import Stage
from precompute.store.manifest import AblationsInfo, TableInfo
from precompute.store.writer import StoreError

SCORES, CONDITIONS, METRICS, SUMMARY = "ablation_scores", "ablation_conditions", "ablation_metrics", "ablation_summary"


def _part_key(chunk_key: str, ids: Sequence[str]) -> str:
    return f"c{chunk_key}-{hashlib.sha1(','.join(ids).encode()).hexdigest()[:12]}"


def _done_in_parts(writer) -> set[tuple[str, str]]:
    """(condition_id, chunk key) held by the score parts already on disk."""
    import pyarrow.parquet as pq

    done = set()
    for path in writer.part_paths(SCORES):
        chunk = path.stem.split("-", 1)[0][1:]
        for cid in set(pq.read_table(path, columns=["condition_id"]).column("condition_id").to_pylist()):
            done.add((cid, chunk))
    return done


def _computed(writer) -> set[str]:
    """Condition ids in the finished ablation_scores table."""
    if not writer.has_table(SCORES):
        return set()
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    return set(pc.unique(pq.read_table(writer.table_path(SCORES), columns=["condition_id"]).column(0)).to_pylist())


def _known_definitions(writer) -> dict[str, dict]:
    """condition_id -> ablation_conditions row, from the finished table and pending parts."""
    import pyarrow.parquet as pq

    rows: dict[str, dict] = {}
    paths = ([writer.table_path(CONDITIONS)] if writer.has_table(CONDITIONS) else []) + writer.part_paths(CONDITIONS)
    for path in paths:
        for row in pq.read_table(path).to_pylist():
            rows.setdefault(row["condition_id"], row)
    return rows


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


def _complete_in_parts(writer, chunk_keys: set[str]) -> set[str]:
    """Condition ids whose score parts cover every chunk of the run."""
    chunks: dict[str, set[str]] = {}
    for cid, key in _done_in_parts(writer):
        chunks.setdefault(cid, set()).add(key)
    return {cid for cid, keys in chunks.items() if keys >= chunk_keys}


def _merge_scores(writer, new: set[str]) -> None:
    """Existing ablation_scores + the conditions ``new`` from the parts -> ablation_scores.parquet (atomic)."""
    parts = writer.root / "_parts" / SCORES
    ids = ", ".join("'" + cid.replace("'", "''") + "'" for cid in sorted(new))
    pieces = [
        f"SELECT condition_id, pair_id, score FROM parts_scores WHERE condition_id IN ({ids}) "
        "QUALIFY row_number() OVER (PARTITION BY condition_id, pair_id) = 1"
    ]
    if writer.has_table(SCORES):
        old = str(writer.table_path(SCORES)).replace("'", "''")
        pieces.insert(0, f"SELECT condition_id, pair_id, score FROM read_parquet('{old}') WHERE condition_id NOT IN ({ids})")
    writer.merge_parts(SCORES, select_sql=" UNION ALL ".join(f"({p})" for p in pieces), sources={"scores": parts})


def _clean_parts(writer, computed: set[str]) -> None:
    """Remove the parts whose conditions are all in the finished tables; keep the work of unfinished ones."""
    import pyarrow.parquet as pq

    for table in (SCORES, CONDITIONS):
        for path in writer.part_paths(table):
            if set(pq.read_table(path, columns=["condition_id"]).column("condition_id").to_pylist()) <= computed:
                path.unlink()
        if not writer.part_paths(table):
            writer.drop_parts(table)


class Ablations(Stage):
    name = "ablations"
    tables = (CONDITIONS, SCORES, METRICS, SUMMARY)

    # -- what is asked for -------------------------------------------------------------------------
    @staticmethod
    def requested(ctx) -> list[Condition]:
        cfg = ctx.lm.config
        return AblationRequest.from_config(ctx.cfg).conditions(cfg.num_hidden_layers, cfg.num_attention_heads)

    @staticmethod
    def settings(ctx) -> tuple[list[str], list[str]]:
        """(measures, scopes) the metric tables must cover: this job's plus those the folder already has."""
        from precompute import significance

        old = ctx.manifest.ablations or AblationsInfo()
        measures = list(dict.fromkeys([*old.measures, *ctx.cfg.measures]))
        scopes = significance.resolve_scopes(ctx.cfg.eval_scopes, ctx.cfg.candidates)
        scopes = [s for s in significance.SCOPES if s in set(old.scopes) | set(scopes)]
        return measures, scopes

    def wanted(self, ctx) -> bool:
        return bool(ctx.cfg.ablations) and bool(self.requested(ctx))

    def check(self, ctx) -> None:
        if not ctx.writer.has_table("pairs"):
            raise StoreError("the ablations stage needs the pairs table of the summary pass; run the summaries stage first")
        _check_settings(ctx, ctx.cfg.ablation_kernel, max(1, int(ctx.cfg.ablation_stack)))
        _check_definitions(self.requested(ctx), _known_definitions(ctx.writer))

    def done(self, ctx) -> bool:
        from precompute import significance

        writer = ctx.writer
        if not super().done(ctx) or writer.part_paths(SCORES) or writer.part_paths(CONDITIONS):
            return False
        computed = _computed(writer)
        if not {c.condition_id for c in self.requested(ctx)} <= computed:
            return False
        measures, scopes = self.settings(ctx)
        return significance.covered(writer, measures, scopes, len(computed))

    # -- the shape ---------------------------------------------------------------------------------
    def compute(self, ctx) -> int:
        import numpy as np
        import pyarrow as pa

        from precompute import ablation
        from precompute.summaries import chunked

        cfg, lm, writer, pairs = ctx.cfg, ctx.lm, ctx.writer, ctx.pair_set.pairs
        requested = self.requested(ctx)
        kernel, stack = cfg.ablation_kernel, max(1, int(cfg.ablation_stack))
        known = _known_definitions(writer)
        computed = _computed(writer)
        todo = [c for c in requested if c.condition_id not in computed]
        if not todo:
            return 0
        # kernel and stack fix the numbers of every part: record them before the first part is written
        ctx.manifest.ablations = ctx.manifest.ablations or AblationsInfo()
        ctx.manifest.ablations.kernel, ctx.manifest.ablations.stack = kernel, stack
        ctx.save_manifest()
        pending = [c for c in todo if c.condition_id not in known]
        if pending:  # definitions first, so a folder never holds scores it cannot describe
            writer.write_part(CONDITIONS, _part_key("defs", [c.condition_id for c in pending]),
                              pa.Table.from_pylist([c.row() for c in pending]))
        done = _done_in_parts(writer)
        chunks = list(chunked(pairs, cfg.chunk_size))
        work = [(group, key, chunk) for group in forward_groups(todo, stack) for key, chunk in chunks]
        total = len(todo) * len(pairs)
        left = sum(len(chunk) * sum((c.condition_id, key) not in done for c in group) for group, key, chunk in work)
        per = ablation.seconds_per_scoring(lm, pairs, todo[0], batch_size=cfg.batch_size, max_length=cfg.max_length,
                                           kernel=kernel) if left else 0.0
        ctx.console.log(
            f"Ablation pass: {len(todo)} of {len(requested)} requested conditions to compute ({len(requested) - len(todo)} "
            f"already in the folder) x {len(pairs):,} pairs: {left:,} scorings left (kernel {kernel}, "
            f"{stack} condition(s) per forward, on {lm.device}), estimated {per * left / 60:.1f} min.")
        with ctx.console.bar(total, "ablations", "scoring") as bar:
            bar.update(total - left)
            for group, key, chunk in work:
                missing = [c for c in group if (c.condition_id, key) not in done]
                if not missing:
                    continue
                scores = ablation.score_conditions(lm, chunk, missing, batch_size=cfg.batch_size,
                                                   max_length=cfg.max_length, kernel=kernel, on_batch=bar.update)
                ids = [p.pair_id for p in chunk]
                writer.write_part(SCORES, _part_key(key, [c.condition_id for c in missing]), pa.table({
                    "condition_id": [c.condition_id for c in missing for _ in ids],
                    "pair_id": pa.array(ids * len(missing), pa.int32()),
                    "score": pa.array(np.concatenate([scores[c.condition_id] for c in missing]), pa.float32()),
                }))
        return len(todo)

    def merge(self, ctx) -> None:
        import pyarrow as pa

        from precompute import significance
        from precompute.summaries import chunked

        writer, requested = ctx.writer, self.requested(ctx)
        chunk_keys = {key for key, _ in chunked(ctx.pair_set.pairs, ctx.cfg.chunk_size)}
        computed = _computed(writer)
        complete = _complete_in_parts(writer, chunk_keys) - computed
        if complete:
            _merge_scores(writer, complete)
        computed = _computed(writer)
        lacking = {c.condition_id for c in requested} - computed
        if lacking:
            raise RuntimeError(f"ablation scores missing after the pass: {sorted(lacking)[:5]}")
        definitions = {**_known_definitions(writer), **{c.condition_id: c.row() for c in requested}}
        if computed - set(definitions):
            raise StoreError(f"ablation_scores holds conditions without a definition ({sorted(computed - set(definitions))[:3]}); "
                             "delete the ablation_* tables and rerun")
        changed = bool(complete) or not writer.has_table(CONDITIONS)
        if changed:
            writer.write_table(CONDITIONS, pa.Table.from_pylist([definitions[cid] for cid in sorted(computed)]))
        measures, scopes = self.settings(ctx)
        significance.write_tables(writer, ctx.ds, ctx.pair_set, measures, scopes, rebuild=changed)
        _clean_parts(writer, computed)

    def record(self, ctx) -> None:
        import pyarrow.parquet as pq

        from precompute import significance

        writer, cfg = ctx.writer, ctx.cfg
        rows = pq.read_table(writer.table_path(CONDITIONS)).to_pylist()
        kinds: dict[str, int] = {}
        for row in rows:
            kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
        measures, scopes = self.settings(ctx)
        request = AblationRequest.from_config(cfg)
        old = ctx.manifest.ablations or AblationsInfo()
        requested = self.requested(ctx)
        ctx.manifest.ablations = AblationsInfo(
            kernel=old.kernel or cfg.ablation_kernel,
            stack=old.stack or max(1, int(cfg.ablation_stack)),
            conditions=sorted(r["condition_id"] for r in rows),
            counts=kinds,
            measures=measures,
            scopes=scopes,
            groups={r["condition"]: r["directions"].split(",") for r in rows if r["kind"] == "group"},
            last_request={
                "sets": list(request.sets), "modes": list(request.modes), "layers": list(request.layers),
                "groups": list(request.groups), "sweep": list(request.sweep), "heads": list(request.heads),
                "requested": len(requested), "computed_now": ctx.computed.get(self.name, 0),
            },
            holm_family=significance.holm_family(writer),
        )
        ctx.manifest.tables.update({
            name: TableInfo(rows=pq.ParquetFile(writer.table_path(name)).metadata.num_rows) for name in self.tables
        })


STAGE = Ablations()
