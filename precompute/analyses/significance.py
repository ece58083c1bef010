"""Per-query effectiveness of every ablation condition and its significance against the baseline.

For each condition (the baseline ``none`` included), each *scope* and each measure we re-rank the scope's
pairs of every query by the condition's scores and evaluate with ir_measures (``ablation_metrics``):

* ``pairs``: all pairs of the run; pairs never judged for their query (easy negatives, unjudged run
  candidates) count as non-relevant, as trec_eval counts unjudged documents;
* ``judged``: judged pairs only (grade >= 0), on request;
* ``run``: the candidate run's pairs (``run_rank`` not NULL), i.e. the run file's ranking re-ranked; only
  for runs built with ``--candidates run:NAME`` (easy negatives added to such runs are left out).

The ideal ranking of nDCG always uses every judgment of the query (``evaluation.qrels_for``), in every scope.

``ablation_summary`` gives per (condition, scope, measure) the condition's parts (its ablation_conditions row), the
mean over queries, the baseline mean over the same queries, the delta, a paired two-sided t-test over queries
(``scipy.stats.ttest_rel``; condition vs baseline) and the Holm-corrected p (:func:`precompute.statistics.holm`)
across the run's conditions of the same analysis (its kind's Holm family; the baseline is in none), scope and
measure. A condition whose per-query values equal the baseline's everywhere has no t-test (t, p NULL) and is
not counted in the Holm family. As the run folder gains conditions the family grows, so corrected p-values
are recomputed whenever conditions are added.

Both tables are small (conditions x scopes x measures x queries rows) and are rebuilt whole by :func:`tables`
whenever the conditions change (the ablation stage installs them together with the scores, in one commit);
the scores are streamed condition by condition from ``ablation_scores`` (sorted by condition).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

from precompute import evaluation
from precompute.conditions import BASELINE
from precompute.statistics import holm

SCOPES: tuple[str, ...] = ("pairs", "judged", "run")


def _condition_columns(table: str) -> list[str]:
    """The columns ``table`` repeats from ablation_conditions (precompute.store.schema)."""
    from precompute.store.schema import ABLATION_CONDITIONS, TABLES

    return [c for c in TABLES[table].column_names if c in ABLATION_CONDITIONS.column_names]


def resolve_scopes(requested: Sequence[str] | None, candidates: str | None) -> list[str]:
    """The scopes to evaluate: ``requested`` (validated) or the default, ``pairs`` plus ``run`` for run candidates."""
    if not requested:
        return ["pairs", "run"] if candidates else ["pairs"]
    scopes = list(dict.fromkeys(s.strip() for s in requested if s.strip()))
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise ValueError(f"--eval-scopes {bad[0]!r}: expected any of {', '.join(SCOPES)}")
    if "run" in scopes and not candidates:
        raise ValueError("--eval-scopes run needs pairs taken from a run (--candidates run:NAME)")
    return scopes


def scope_mask(scope: str, grade: np.ndarray, run_rank: np.ndarray) -> np.ndarray:
    """Which pairs a scope ranks. ``run_rank`` is float with NaN for NULL."""
    if scope == "pairs":
        return np.ones(len(grade), bool)
    if scope == "judged":
        return grade >= 0
    if scope == "run":
        return ~np.isnan(run_rank)
    raise ValueError(f"unknown scope {scope!r}")


def paired_ttest(values: np.ndarray, baseline: np.ndarray) -> tuple[float | None, float | None]:
    """Two-sided paired t-test of ``values`` against ``baseline`` (same queries, same order); None when undefined."""
    from scipy import stats

    values, baseline = np.asarray(values, float), np.asarray(baseline, float)
    if len(values) < 2 or np.array_equal(values, baseline):
        return None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_rel(values, baseline)
    t, p = float(res.statistic), float(res.pvalue)
    return (None if math.isnan(t) else t), (None if math.isnan(p) else p)


def per_query_metrics(pairs: dict[str, np.ndarray], scores: np.ndarray, qrels_evaluator, scopes: Sequence[str]
                      ) -> dict[tuple[str, str], dict[str, float]]:
    """(scope, measure) -> qid -> value for one condition's scores (aligned with ``pairs`` arrays)."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for scope in scopes:
        mask = scope_mask(scope, pairs["grade"], pairs["run_rank"])
        run = evaluation.run_records(pairs["qid"][mask], pairs["docid"][mask], scores[mask])
        for metric in qrels_evaluator.iter_calc(run):
            out.setdefault((scope, str(metric.measure)), {})[metric.query_id] = float(metric.value)
    return out


def _load_pairs(path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["pair_id", "qid", "docid", "grade", "run_rank"]).sort_by("pair_id")
    rank = t.column("run_rank").to_numpy(zero_copy_only=False)
    return {
        "pair_id": t.column("pair_id").to_numpy(),
        "qid": np.asarray(t.column("qid").to_pylist(), dtype=object),
        "docid": np.asarray(t.column("docid").to_pylist(), dtype=object),
        "grade": t.column("grade").to_numpy().astype(int),
        "run_rank": np.asarray(rank, dtype=float),
    }


def iter_condition_scores(path, n_pairs: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(condition_id, pair_ids, scores) per condition, streamed from ablation_scores (sorted by condition, pair)."""
    import pyarrow.parquet as pq

    current, ids, vals = None, [], []
    for batch in pq.ParquetFile(path).iter_batches(batch_size=max(65_536, n_pairs), columns=["condition_id", "pair_id", "score"]):
        cids = batch.column(0).to_numpy(zero_copy_only=False)
        pids, scs = batch.column(1).to_numpy(), batch.column(2).to_numpy()
        bounds = np.flatnonzero(cids[1:] != cids[:-1]) + 1
        for lo, hi in zip([0, *bounds], [*bounds, len(cids)]):
            cid = cids[lo]
            if cid != current and current is not None:
                yield current, np.concatenate(ids), np.concatenate(vals)
                ids, vals = [], []
            current = cid
            ids.append(pids[lo:hi])
            vals.append(scs[lo:hi])
    if current is not None:
        yield current, np.concatenate(ids), np.concatenate(vals)


def metric_rows(pairs_path, scores_path, ds, pair_set, measures: Sequence[str], scopes: Sequence[str],
                conditions: dict[str, dict]) -> list[dict]:
    """ablation_metrics rows of every condition in the ablation_scores file ``scores_path``."""
    qrels = evaluation.qrels_for(ds.qrels(), pair_set.queries)
    ev = evaluation.evaluator(evaluation.parse_measures(measures), qrels)
    pairs = _load_pairs(pairs_path)
    n = len(pairs["pair_id"])
    position = np.full(int(pairs["pair_id"].max()) + 1, -1)
    position[pairs["pair_id"]] = np.arange(n)
    rows, columns = [], _condition_columns("ablation_metrics")
    for cid, pids, scores in iter_condition_scores(scores_path, n):
        if len(pids) != n:
            raise ValueError(f"condition {cid} has {len(pids)} scores for {n} pairs")
        aligned = np.empty(n, np.float64)
        aligned[position[pids]] = scores
        base = {k: conditions[cid][k] for k in columns}
        for (scope, measure), per_q in per_query_metrics(pairs, aligned, ev, scopes).items():
            rows += [{**base, "scope": scope, "measure": measure, "qid": qid, "value": v} for qid, v in per_q.items()]
    return rows


def summary_rows(metrics: list[dict], conditions: dict[str, dict]) -> list[dict]:
    """ablation_summary rows from ablation_metrics rows and the conditions' ablation_conditions rows. Each analysis is
    its own Holm family (per scope and measure); the baseline (analysis NULL) is in none."""
    grouped: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for r in metrics:
        grouped.setdefault((r["scope"], r["measure"]), {}).setdefault(r["condition_id"], {})[r["qid"]] = r["value"]
    out, columns = [], _condition_columns("ablation_summary")
    for (scope, measure), by_cond in sorted(grouped.items()):
        base = by_cond.get(BASELINE)
        if base is None:
            raise ValueError(f"no baseline ('none') metrics for {scope} {measure}")
        rows = []
        for cid in sorted(by_cond):
            vals = by_cond[cid]
            qids = sorted(set(vals) & set(base))
            x = np.array([vals[q] for q in qids], float)
            y = np.array([base[q] for q in qids], float)
            t, p = (None, None) if cid == BASELINE else paired_ttest(x, y)
            mean = float(x.mean()) if len(x) else float("nan")
            baseline = float(y.mean()) if len(y) else float("nan")
            rows.append({
                **{k: conditions[cid][k] for k in columns},
                "scope": scope, "measure": measure, "n_queries": len(qids), "mean": mean, "baseline": baseline,
                "delta": mean - baseline, "t": t, "p": p, "p_holm": None,
            })
        for analysis in sorted({r["analysis"] for r in rows if r["analysis"] is not None}):
            members = [r for r in rows if r["analysis"] == analysis]
            for r, a in zip(members, holm([r["p"] for r in members])):
                r["p_holm"] = None if math.isnan(a) else float(a)
        out += rows
    return out


def tables(pairs_path, scores_path, ds, pair_set, measures: Sequence[str], scopes: Sequence[str],
           conditions: dict[str, dict]):
    """(ablation_metrics, ablation_summary) as Arrow tables for the scores in ``scores_path``."""
    import pyarrow as pa

    metrics = metric_rows(pairs_path, scores_path, ds, pair_set, measures, scopes, conditions)
    summary = summary_rows(metrics, conditions)
    return pa.Table.from_pylist(metrics), pa.Table.from_pylist(summary)


def condition_sets(path) -> dict[tuple[str, str], set[str]]:
    """(scope, measure) -> the condition ids an ablation_metrics or ablation_summary file holds."""
    import pyarrow.parquet as pq

    cols = pq.read_table(path, columns=["scope", "measure", "condition_id"]).to_pydict()
    out: dict[tuple[str, str], set[str]] = {}
    for scope, measure, cid in zip(cols["scope"], cols["measure"], cols["condition_id"]):
        out.setdefault((scope, measure), set()).add(cid)
    return out


def holm_families(summary_path) -> dict[str, int]:
    """analysis -> the largest number of tested conditions in one of its Holm families (scope x measure)."""
    import pyarrow.parquet as pq

    summary = pq.read_table(summary_path, columns=["scope", "measure", "p_holm", "analysis"]).to_pylist()
    families: dict[tuple, int] = {}
    for r in summary:
        if r["analysis"] is not None:
            key = (r["analysis"], r["scope"], r["measure"])
            families[key] = families.get(key, 0) + (r["p_holm"] is not None)
    out: dict[str, int] = {}
    for (analysis, _, _), n in families.items():
        out[analysis] = max(out.get(analysis, 0), n)
    return out
