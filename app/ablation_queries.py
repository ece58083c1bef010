"""The Ablations page's SQL (and the Compare page's ablation table): Table 1, sweeps, head ablations, component
and QK-subspace conditions, per-query values.

Each function takes the run's DuckDB connection (``app.connections.open_run``) and returns a DataFrame; pages
call them through ``app.data.query``. A condition's parts (kind, analysis, component, segment, k, ...) are columns of
``ablation_summary`` (schema 3; derived for older stores by ``precompute.store.connect``): nothing here parses an id.
"""

from __future__ import annotations

import pandas as pd

from app import sqltext as sq
from app.slice import Slice
from precompute.conditions import BASELINE
from precompute.metrics import METRICS
from precompute.names import DIRECTIONS, SEGMENTS

TABLE1_KINDS = ("baseline", "direction", "group")  # ablation_summary.kind rows of the paper's Table 1
COMPONENT_SEGMENTS = ("all", *SEGMENTS)  # 'all' = the component at every token (condition without ':segment')
SUBSPACE_NAMED = ("q_d", "d_q", "q_d_exact")  # the head's own metrics the subspace table shows by name


# -- Table 1, sweeps, heads, per query --------------------------------------------------------------
def ablation_options(con) -> pd.DataFrame:
    """The (scope, measure) combinations of ablation_summary, most useful first."""
    return sq.frame(con, """
        SELECT scope, measure, count(*) AS conditions FROM ablation_summary GROUP BY scope, measure
        ORDER BY scope <> 'pairs', measure <> 'nDCG@10', scope, measure
    """)


def ablation_table(con, scope: str, measure: str) -> pd.DataFrame:
    """The paper's Table 1: baseline, direction and group ablations with mean, delta and significance."""
    sql = f"""
        SELECT condition_id, kind, condition, mode, layers, n_queries, mean, baseline, delta, t, p, p_holm
        FROM ablation_summary
        WHERE scope = ? AND measure = ? AND {sq.is_in('kind', TABLE1_KINDS)}
        ORDER BY kind <> 'baseline', kind, condition, mode, layers
    """
    return sq.ints(sq.frame(con, sql, [scope, measure]), "n_queries")


def ablation_layer_sweeps(con, scope: str, measure: str) -> pd.DataFrame:
    """Per-layer sweeps: one row per condition x layer."""
    sql = """
        SELECT condition_id, condition, mode, layer, mean, baseline, delta, p_holm
        FROM ablation_summary WHERE scope = ? AND measure = ? AND kind = 'layer_sweep' AND layer IS NOT NULL
        ORDER BY condition, mode, layer
    """
    return sq.ints(sq.frame(con, sql, [scope, measure]), "layer")


def ablation_heads(con, scope: str, measure: str) -> pd.DataFrame:
    """Head ablations: one row per ablated layer x head (and mode)."""
    sql = """
        SELECT condition_id, mode, layer, head, mean, baseline, delta, p_holm
        FROM ablation_summary WHERE scope = ? AND measure = ? AND kind = 'head'
              AND layer IS NOT NULL AND head IS NOT NULL
        ORDER BY mode, layer, head
    """
    return sq.ints(sq.frame(con, sql, [scope, measure]), "layer", "head")


def ablation_per_query(con, sl: Slice, condition_id: str, scope: str, measure: str) -> pd.DataFrame:
    """Per-query value under one condition and under the baseline, and the delta (queries of the slice)."""
    qfilter = f"AND {sq.is_in('c.qid', sl.qids)}" if sl.qids else ""
    sql = f"""
        WITH q AS (SELECT qid, any_value(query) AS query FROM pairs GROUP BY qid)
        SELECT c.qid, q.query, c.value, b.value AS baseline, c.value - b.value AS delta
        FROM ablation_metrics c
        JOIN ablation_metrics b ON b.qid = c.qid AND b.scope = c.scope AND b.measure = c.measure
             AND b.condition_id = {sq.lit(BASELINE)}
        LEFT JOIN q ON q.qid = c.qid
        WHERE c.condition_id = ? AND c.scope = ? AND c.measure = ? {qfilter}
        ORDER BY delta, c.qid
    """
    return sq.frame(con, sql, [condition_id, scope, measure])


def ablation_slice_means(con, sl: Slice, scope: str, measure: str) -> pd.DataFrame:
    """Mean of each condition and of the baseline over the slice's queries (from ablation_metrics)."""
    qfilter = f"AND {sq.is_in('c.qid', sl.qids)}" if sl.qids else ""
    sql = f"""
        SELECT c.condition_id, count(*) AS n_queries, avg(c.value) AS mean, avg(b.value) AS baseline,
               avg(c.value - b.value) AS delta
        FROM ablation_metrics c
        JOIN ablation_metrics b ON b.qid = c.qid AND b.scope = c.scope AND b.measure = c.measure
             AND b.condition_id = {sq.lit(BASELINE)}
        WHERE c.scope = ? AND c.measure = ? {qfilter}
        GROUP BY c.condition_id ORDER BY c.condition_id
    """
    return sq.ints(sq.frame(con, sql, [scope, measure]), "n_queries")


def analysis_families(con, scope: str, measure: str) -> pd.DataFrame:
    """Per analysis (each its own Holm family): conditions and how many were tested (p not NULL)."""
    df = sq.frame(con, """
        SELECT analysis, count(*) AS conditions, count(p) AS tested FROM ablation_summary
        WHERE scope = ? AND measure = ? AND analysis IS NOT NULL GROUP BY analysis ORDER BY analysis
    """, [scope, measure])
    return sq.ints(df, "conditions", "tested")


# -- Component conditions (kind 'component': mlp@3:d/mean, attn@0-2/zero) ---------------------------
def component_table(con, scope: str, measure: str) -> pd.DataFrame:
    """Component conditions in Table-1 form, with the component ('attn', 'mlp') and the segment ('all' when the
    condition removes the block's output at every token)."""
    order = ", ".join(sq.lit(s) for s in COMPONENT_SEGMENTS)
    sql = f"""
        SELECT condition_id, component, coalesce(segment, 'all') AS segment,
               mode, layers, layer, n_queries, mean, baseline, delta, t, p, p_holm
        FROM ablation_summary WHERE scope = ? AND measure = ? AND kind = 'component'
        ORDER BY layer NULLS LAST, layers, component, list_position([{order}], coalesce(segment, 'all')), mode
    """
    df = sq.frame(con, sql, [scope, measure])
    df["layer"] = pd.array(df["layer"], dtype="Int64")
    return sq.ints(df, "n_queries")


# -- QK-subspace conditions (kind 'subspace': qk:3.5:k2/remove, qk:3.5:k2/scale=2) ----------------------
def _head_means(con, cells: list[tuple[int, int]]) -> pd.DataFrame:
    """Mean of every metric of the given heads over all the run's pairs (head_attention with literal layer/head
    filters, so row-group statistics prune the rest): layer, head, <metric>..."""
    cols = ", ".join(f"avg({m}) AS {m}" for m in METRICS)
    parts = [f"SELECT {int(l)} AS layer, {int(h)} AS head, {cols} FROM head_attention "
             f"WHERE layer = {int(l)} AND head = {int(h)}" for l, h in sorted(set(cells))]
    return sq.frame(con, " UNION ALL ".join(parts))


def _subspace_deltas(con, condition_ids) -> pd.DataFrame:
    """Per subspace condition and metric: n, mean with the intervention (subspace_head_metrics), without it (the
    head's head_attention rows), delta. The same numbers as the view subspace_effects (mean of with - without over
    the pairs: a metric is NULL on the same pairs with and without, so the mean of the difference is the difference of
    the means), computed as two column scans instead of its UNPIVOT and join (6 s for 40 conditions x 14k pairs)."""
    cols = ", ".join(f"avg({m}) AS {m}" for m in METRICS)
    with_ = sq.frame(con, f"""
        SELECT condition_id, any_value(layer) AS layer, any_value(head) AS head, count(*) AS n, {cols}
        FROM subspace_head_metrics WHERE {sq.is_in('condition_id', condition_ids)} GROUP BY condition_id
    """)
    if with_.empty:
        return pd.DataFrame(columns=["condition_id", "metric", "n", "mean", "baseline", "delta"])
    without = _head_means(con, list(zip(with_["layer"].astype(int), with_["head"].astype(int))))
    a = with_.melt(id_vars=["condition_id", "layer", "head", "n"], value_vars=list(METRICS), var_name="metric",
                   value_name="mean")
    b = without.melt(id_vars=["layer", "head"], value_vars=list(METRICS), var_name="metric", value_name="baseline")
    out = a.merge(b, on=["layer", "head", "metric"], how="left")
    out["delta"] = out["mean"] - out["baseline"]
    return sq.ints(out[["condition_id", "metric", "n", "mean", "baseline", "delta"]], "n")


def subspace_table(con, scope: str, measure: str) -> pd.DataFrame:
    """One row per subspace condition: its effect on the measure (Table-1 columns) and the change of its head's own
    metrics over the run's pairs (as the view subspace_effects): delta of q_d, d_q, q_d_exact, and the largest change
    among the other directions (which one, and by how much), so that "the head stops matching Query->Document but
    keeps its other directions" reads off one row. NaN where the run has no subspace_head_metrics or a metric is
    NULL (a direction the model cannot attend)."""
    sql = """
        SELECT condition_id, layer, head, CAST(k AS INTEGER) AS k, operation, n_queries, mean, baseline, delta, t, p,
               p_holm
        FROM ablation_summary WHERE scope = ? AND measure = ? AND kind = 'subspace'
        ORDER BY layer, head, k, operation
    """
    df = sq.ints(sq.frame(con, sql, [scope, measure]), "layer", "head", "n_queries")
    for m in SUBSPACE_NAMED:
        df[f"delta_{m}"] = float("nan")
    df["other_direction"], df["other_delta"] = None, float("nan")
    if df.empty or not _has_table(con, "subspace_head_metrics"):
        return df
    effects = _subspace_deltas(con, list(df["condition_id"]))
    wide = effects.pivot_table(index="condition_id", columns="metric", values="delta", aggfunc="first", dropna=False)
    for m in SUBSPACE_NAMED:
        if m in wide.columns:
            df[f"delta_{m}"] = df["condition_id"].map(wide[m])
    others = wide[[d for d in DIRECTIONS if d not in ("q_d", "d_q") and d in wide.columns]]
    for i, cid in enumerate(df["condition_id"]):
        row = others.loc[cid].dropna() if cid in others.index else pd.Series(dtype=float)
        if len(row):
            best = row.abs().idxmax()
            df.loc[df.index[i], ["other_direction", "other_delta"]] = [best, float(row[best])]
    df["other_delta"] = df["other_delta"].astype(float)
    return df


def subspace_metric_deltas(con, condition_id: str) -> pd.DataFrame:
    """Every metric of one subspace condition's head: n, mean with and without the intervention, delta (as the view
    subspace_effects), in precompute.metrics order."""
    df = _subspace_deltas(con, [condition_id])
    order = {m: i for i, m in enumerate(METRICS)}
    return df.sort_values("metric", key=lambda s: s.map(order)).reset_index(drop=True).drop(columns="condition_id")


def _has_table(con, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = ? AND NOT internal",
                            [name]).fetchone()[0]
                or con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]).fetchone()[0])
