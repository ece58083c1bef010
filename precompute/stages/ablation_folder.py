"""What a run folder holds of the ablations, and the one step that changes it.

Reads: which (condition, chunk) the score parts hold, which conditions the finished tables hold, the known
condition definitions, and whether the four tables agree. Writes: :func:`commit_tables` stages the new
``ablation_scores`` (old scores + completed parts), ``ablation_conditions``, ``ablation_metrics`` and
``ablation_summary`` beside the old ones and installs them in one commit (:mod:`precompute.store.commit`),
so the four always describe the same conditions, whatever is killed when. :func:`consistent` is checked on
every rerun: a folder an older version left disagreeing (scores of 32 conditions, the others of 7) is
rebuilt from its scores and definitions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from precompute.store.sql import literal

SCORES, CONDITIONS, QUERY_METRICS, SUMMARY = "ablation_scores", "ablation_conditions", "ablation_metrics", "ablation_summary"
SUBSPACE = "subspace_head_metrics"  # the own head's metrics under each condition whose kind measures it (subspace)


def subspace_rows(conditions, pair_ids: list[int], head_metrics: dict):
    """subspace_head_metrics rows of one chunk: per condition that measures its head and pair, the head's summary
    metrics (precompute.metrics.METRICS)."""
    import numpy as np
    import pyarrow as pa

    from precompute.metrics import METRICS

    own = [c for c in conditions if c.spec.measures_head]
    values = np.concatenate([head_metrics[c.condition_id] for c in own]).astype(np.float32)
    n = len(pair_ids)
    columns = {
        "condition_id": [c.condition_id for c in own for _ in pair_ids],
        "pair_id": pa.array(pair_ids * len(own), pa.int32()),
        "layer": pa.array([c.layer for c in own for _ in range(n)], pa.int8()),
        "head": pa.array([c.head for c in own for _ in range(n)], pa.int8()),
    }
    columns.update({name: pa.array(values[:, i], pa.float32(), from_pandas=True) for i, name in enumerate(METRICS)})
    return pa.table(columns)


def part_key(chunk_key: str, ids: Sequence[str]) -> str:
    return f"c{chunk_key}-{hashlib.sha1(','.join(ids).encode()).hexdigest()[:12]}"


def _ids(path) -> set[str]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    return set(pc.unique(pq.read_table(path, columns=["condition_id"]).column(0)).to_pylist())


def done_in_parts(writer) -> set[tuple[str, str]]:
    """(condition_id, chunk key) held by the score parts on disk (parts that fail verification are deleted)."""
    done = set()
    for path in writer.verify_parts(SCORES):
        chunk = path.stem.split("-", 1)[0][1:]
        done.update((cid, chunk) for cid in _ids(path))
    return done


def complete_in_parts(writer, chunk_keys: set[str]) -> set[str]:
    """Condition ids whose score parts cover every chunk of the run."""
    chunks: dict[str, set[str]] = {}
    for cid, key in done_in_parts(writer):
        chunks.setdefault(cid, set()).add(key)
    return {cid for cid, keys in chunks.items() if keys >= chunk_keys}


def computed(writer) -> set[str]:
    """Condition ids in the finished ablation_scores table."""
    return _ids(writer.table_path(SCORES)) if writer.has_table(SCORES) else set()


def known_definitions(writer) -> dict[str, dict]:
    """condition_id -> ablation_conditions row, from the finished table and the definition parts."""
    import pyarrow.parquet as pq

    rows: dict[str, dict] = {}
    paths = ([writer.table_path(CONDITIONS)] if writer.has_table(CONDITIONS) else []) + writer.verify_parts(CONDITIONS)
    for path in paths:
        for row in pq.read_table(path).to_pylist():
            rows.setdefault(row["condition_id"], row)
    return rows


def stored_settings(writer) -> tuple[list[str], list[str]]:
    """(measures, scopes) the finished ablation_summary holds (kept when conditions are added, with or without
    the manifest that also lists them)."""
    if not writer.has_table(SUMMARY):
        return [], []
    from precompute.analyses import significance

    keys = significance.condition_sets(writer.table_path(SUMMARY))
    return sorted({m for _, m in keys}), sorted({s for s, _ in keys})


def consistent(writer, ids: set[str], measures: Sequence[str], scopes: Sequence[str]) -> bool:
    """Do ablation_conditions, _metrics and _summary describe exactly the conditions ``ids`` (those of
    ablation_scores), for every scope and measure asked for?"""
    from precompute import evaluation
    from precompute.analyses import significance

    if not all(writer.has_table(t) for t in (CONDITIONS, QUERY_METRICS, SUMMARY)) or _ids(writer.table_path(CONDITIONS)) != ids:
        return False
    wanted = {(s, str(m)) for s in scopes for m in evaluation.parse_measures(measures)}
    for table in (QUERY_METRICS, SUMMARY):
        sets = significance.condition_sets(writer.table_path(table))
        if not wanted <= set(sets) or any(held != ids for held in sets.values()):
            return False
    return True


def merge_scores(writer, new: set[str]):
    """Stage ablation_scores: the finished table's conditions + the conditions ``new`` from the parts.

    A (condition, pair) that two parts hold (requests that grouped conditions differently) is taken once, the
    same one every time (``ORDER BY score``), so identical folders merge to identical bytes.
    """
    parts = writer.root / "_parts" / SCORES
    ids = ", ".join(map(literal, sorted(new)))
    pieces = [
        f"SELECT condition_id, pair_id, score FROM parts_scores WHERE condition_id IN ({ids}) "
        "QUALIFY row_number() OVER (PARTITION BY condition_id, pair_id ORDER BY score) = 1"
    ]
    sources = {"scores": parts}
    if writer.has_table(SCORES):
        sources["old"] = writer.table_path(SCORES)
        pieces.insert(0, f"SELECT condition_id, pair_id, score FROM parts_old WHERE condition_id NOT IN ({ids})")
    return writer.merge_parts(SCORES, select_sql=" UNION ALL ".join(f"({p})" for p in pieces), sources=sources,
                              staged=True)


def merge_subspace(writer, new: set[str]):
    """Stage subspace_head_metrics: the finished table's conditions + the subspace conditions ``new`` from the parts."""
    ids = ", ".join(map(literal, sorted(new)))
    pieces = [f"SELECT * FROM parts_metrics WHERE condition_id IN ({ids}) "
              "QUALIFY row_number() OVER (PARTITION BY condition_id, pair_id ORDER BY q_d) = 1"]
    sources = {"metrics": writer.root / "_parts" / SUBSPACE}
    if writer.has_table(SUBSPACE):
        sources["old"] = writer.table_path(SUBSPACE)
        pieces.insert(0, f"SELECT * FROM parts_old WHERE condition_id NOT IN ({ids})")
    return writer.merge_parts(SUBSPACE, select_sql=" UNION ALL ".join(f"({p})" for p in pieces), sources=sources,
                              staged=True)


def commit_tables(writer, ds, pair_set, new: set[str], ids: set[str], definitions: dict[str, dict],
                  measures: Sequence[str], scopes: Sequence[str]) -> None:
    """Stage the four tables for the conditions ``ids`` (``new`` of them from the parts), and subspace_head_metrics
    when new subspace conditions come, and install them at once."""
    import pyarrow as pa

    from precompute.analyses import significance
    from precompute.conditions import kind_of

    scores = merge_scores(writer, new) if new else writer.table_path(SCORES)
    new_subspace = {cid for cid in new if kind_of(definitions[cid]["kind"]).measures_head}
    if new_subspace:
        merge_subspace(writer, new_subspace)
    rows = {cid: definitions[cid] for cid in sorted(ids)}
    writer.write_table(CONDITIONS, pa.Table.from_pylist(list(rows.values())), staged=True)
    metrics, summary = significance.tables(writer.table_path("pairs"), scores, ds, pair_set, measures, scopes, rows)
    writer.write_table(QUERY_METRICS, metrics, staged=True)
    writer.write_table(SUMMARY, summary, staged=True)
    writer.commit("ablations", [*([SCORES] if new else []), *([SUBSPACE] if new_subspace else []), CONDITIONS,
                                QUERY_METRICS, SUMMARY])


def clean_parts(writer, ids: set[str]) -> None:
    """Remove the parts whose conditions are all in the finished tables; keep the work of unfinished ones."""
    for table in (SCORES, CONDITIONS, SUBSPACE):
        for path in writer.part_paths(table):
            if _ids(path) <= ids:
                path.unlink()
        if not writer.part_paths(table):
            writer.drop_parts(table)
