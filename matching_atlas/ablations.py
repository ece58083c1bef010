"""Ablation results: the paper's Table 1 (one row per condition), per-layer sweeps, head ablations, component and
QK-subspace conditions, per-query values and each analysis' Holm family.

A condition's parts (kind, analysis, component, segment, k, ...) are columns of ``ablation_summary`` (schema 3;
derived for older stores by ``precompute.store.connect``): nothing here parses an id. Every method takes the measure
and the scope of the rows it reads (``nDCG@10`` over ``pairs`` by default: :meth:`ablation_options` lists the run's).
"""

from __future__ import annotations

import pandas as pd

from matching_atlas import sqltext as sq
from matching_atlas.reading import ALL, Reader
from matching_atlas.slice import Slice
from precompute.conditions import BASELINE, REGISTRY
from precompute.conditions.subspace_specs import ALIGNED_KIND, SUBSPACE_KIND
from precompute.metrics import METRICS
from precompute.names import DIRECTIONS, SEGMENTS
from precompute.statistics import holm, paired_over_queries, stars

MEASURE, SCOPE = "nDCG@10", "pairs"  # what the job evaluates by default (--measures, --eval-scopes)
TABLE1_KINDS = ("baseline", "direction", "group")  # the kinds of the paper's Table 1
COMPONENT_SEGMENTS = ("all", *SEGMENTS)  # 'all' = the component at every token (condition without ':segment')
SUBSPACE_KINDS = (SUBSPACE_KIND.name, ALIGNED_KIND.name)  # top-k (qk:L.H:kN) and most aligned (qk:L.H:aN) components
SUBSPACE_NAMED = ("q_d", "d_q", "q_d_exact")  # the head's own metrics the subspace table shows by name
# ablation_summary's columns as table1 returns them: the condition, its parts, then its statistics.
TABLE1_COLUMNS = ("condition_id", "kind", "analysis", "condition", "mode", "layers", "layer", "head", "directions",
                  "component", "segment", "k", "operation", "factor", "n_queries", "mean", "baseline", "delta", "t",
                  "p", "p_holm")


def _kinds(kind: str | tuple[str, ...] | None) -> tuple[str, ...] | None:
    return (kind,) if isinstance(kind, str) else (tuple(kind) if kind is not None else None)


def _kind_order(column: str = "kind") -> str:
    """SQL ordering rows by the registry's order of their kind (an unknown kind last)."""
    return f"coalesce(list_position([{', '.join(sq.lit(k) for k in REGISTRY)}], {column}), {len(REGISTRY) + 1})"


def _nullable_ints(df: pd.DataFrame, *cols: str) -> pd.DataFrame:
    for c in cols:
        if c in df.columns:
            df[c] = pd.array(df[c], dtype="Int64")
    return df


class AblationTables(Reader):
    """Methods of :class:`matching_atlas.Run` on ablation_conditions, ablation_summary, ablation_metrics and
    subspace_head_metrics."""

    def ablation_options(self) -> pd.DataFrame:
        """The (scope, measure) combinations of ablation_summary with their number of conditions, most useful first
        (pairs and nDCG@10 first)."""
        return self._frame("""
            SELECT scope, measure, count(*) AS conditions FROM ablation_summary GROUP BY scope, measure
            ORDER BY scope <> 'pairs', measure <> 'nDCG@10', scope, measure
        """)

    def conditions(self) -> pd.DataFrame:
        """Every condition the run computed (table ablation_conditions, the baseline ``none`` included), with its parts
        as columns, by kind in the registry's order."""
        df = self._frame(f"SELECT * FROM ablation_conditions ORDER BY {_kind_order()}, condition_id")
        return _nullable_ints(df, "layer", "head", "k")

    def table1(self, measure: str = MEASURE, scope: str = SCOPE,
               kind: str | tuple[str, ...] | None = None) -> pd.DataFrame:
        """The paper's Table 1, one row per ablation condition: its parts (condition_id, kind, analysis, condition,
        mode, layers, layer, head, directions, component, segment, k, operation, factor), n_queries, the measure's
        mean over queries, the baseline's over the same queries, delta, the paired t-test's t and p and Holm's p
        within its analysis. ``kind`` (one or several, e.g. :data:`TABLE1_KINDS`) keeps those kinds; rows come by kind
        in the registry's order, then condition, mode and layers."""
        kinds = _kinds(kind)
        only = f" AND {sq.is_in('kind', kinds)}" if kinds else ""
        sql = f"""
            SELECT {', '.join(TABLE1_COLUMNS)} FROM ablation_summary
            WHERE scope = ? AND measure = ?{only}
            ORDER BY {_kind_order()}, condition, mode, layers, condition_id
        """
        df = sq.ints(self._frame(sql, [scope, measure]), "n_queries")
        return _nullable_ints(df, "layer", "head", "k")

    def layer_sweeps(self, measure: str = MEASURE, scope: str = SCOPE) -> pd.DataFrame:
        """Per-layer sweeps: one row per condition x layer (condition_id, condition, mode, layer, mean, baseline,
        delta, p_holm)."""
        sql = """
            SELECT condition_id, condition, mode, layer, mean, baseline, delta, p_holm
            FROM ablation_summary WHERE scope = ? AND measure = ? AND kind = 'layer_sweep' AND layer IS NOT NULL
            ORDER BY condition, mode, layer
        """
        return sq.ints(self._frame(sql, [scope, measure]), "layer")

    def head_ablations(self, measure: str = MEASURE, scope: str = SCOPE) -> pd.DataFrame:
        """Head ablations: one row per ablated layer x head and mode."""
        sql = """
            SELECT condition_id, mode, layer, head, mean, baseline, delta, p_holm
            FROM ablation_summary WHERE scope = ? AND measure = ? AND kind = 'head'
                  AND layer IS NOT NULL AND head IS NOT NULL
            ORDER BY mode, layer, head
        """
        return sq.ints(self._frame(sql, [scope, measure]), "layer", "head")

    def per_query(self, condition_id: str, measure: str = MEASURE, scope: str = SCOPE,
                  where: Slice | None = None) -> pd.DataFrame:
        """Per query (of the slice): the measure under one condition and under the baseline, and the delta."""
        sl = where or ALL
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
        return self._frame(sql, [condition_id, scope, measure])

    def query_deltas(self, measure: str = MEASURE, scope: str = SCOPE, where: Slice | None = None) -> pd.DataFrame:
        """Per condition (the baseline excepted) and query (of the slice): condition_id, qid, delta = the measure
        under the condition minus under the baseline (what :func:`compare_deltas` pairs across two runs)."""
        sl = where or ALL
        qfilter = f"AND {sq.is_in('c.qid', sl.qids)}" if sl.qids else ""
        sql = f"""
            SELECT c.condition_id, c.qid, c.value - b.value AS delta
            FROM ablation_metrics c
            JOIN ablation_metrics b ON b.qid = c.qid AND b.scope = c.scope AND b.measure = c.measure
                 AND b.condition_id = {sq.lit(BASELINE)}
            WHERE c.scope = ? AND c.measure = ? AND c.condition_id <> {sq.lit(BASELINE)} {qfilter}
            ORDER BY c.condition_id, c.qid
        """
        return self._frame(sql, [scope, measure])

    def slice_means(self, measure: str = MEASURE, scope: str = SCOPE, where: Slice | None = None) -> pd.DataFrame:
        """Mean of each condition and of the baseline over the slice's queries (from ablation_metrics)."""
        sl = where or ALL
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
        return sq.ints(self._frame(sql, [scope, measure]), "n_queries")

    def holm_families(self, measure: str = MEASURE, scope: str = SCOPE) -> pd.DataFrame:
        """Per analysis (each its own Holm family): its conditions and how many were tested (p not NULL)."""
        df = self._frame("""
            SELECT analysis, count(*) AS conditions, count(p) AS tested FROM ablation_summary
            WHERE scope = ? AND measure = ? AND analysis IS NOT NULL GROUP BY analysis ORDER BY analysis
        """, [scope, measure])
        return sq.ints(df, "conditions", "tested")

    # -- component conditions (kind 'component': mlp@3:d/mean, attn@0-2/zero) ----------------------------------
    def component_effects(self, measure: str = MEASURE, scope: str = SCOPE) -> pd.DataFrame:
        """Component conditions in Table-1 form, with the component ('attn', 'mlp') and the segment ('all' when the
        condition removes the block's output at every token)."""
        order = ", ".join(sq.lit(s) for s in COMPONENT_SEGMENTS)
        sql = f"""
            SELECT condition_id, component, coalesce(segment, 'all') AS segment,
                   mode, layers, layer, n_queries, mean, baseline, delta, t, p, p_holm
            FROM ablation_summary WHERE scope = ? AND measure = ? AND kind = 'component'
            ORDER BY layer NULLS LAST, layers, component, list_position([{order}], coalesce(segment, 'all')), mode
        """
        df = self._frame(sql, [scope, measure])
        df["layer"] = pd.array(df["layer"], dtype="Int64")
        return sq.ints(df, "n_queries")

    # -- QK-subspace conditions (kind 'subspace': qk:3.5:k2/remove, qk:3.5:k2/scale=2) ---------------------------
    def subspace_effects(self, measure: str = MEASURE, scope: str = SCOPE) -> pd.DataFrame:
        """One row per subspace condition: its effect on the measure (Table-1 columns) and the change of its head's
        own metrics over the run's pairs (as the view subspace_effects): delta of q_d, d_q, q_d_exact, and the largest
        change among the other directions (which one, and by how much), so that "the head stops matching
        Query->Document but keeps its other directions" reads off one row. NaN where the run has no
        subspace_head_metrics or a metric is NULL (a direction the model cannot attend)."""
        sql = f"""
            SELECT condition_id, layer, head, CAST(k AS INTEGER) AS k, operation, n_queries, mean, baseline, delta, t,
                   p, p_holm
            FROM ablation_summary WHERE scope = ? AND measure = ? AND {sq.is_in("kind", SUBSPACE_KINDS)}
            ORDER BY layer, head, kind, k, operation
        """
        df = sq.ints(self._frame(sql, [scope, measure]), "layer", "head", "n_queries")
        for m in SUBSPACE_NAMED:
            df[f"delta_{m}"] = float("nan")
        df["other_direction"], df["other_delta"] = None, float("nan")
        if df.empty or not self._defined("subspace_head_metrics"):
            return df
        effects = self._subspace_deltas(list(df["condition_id"]))
        wide = effects.pivot_table(index="condition_id", columns="metric", values="delta", aggfunc="first",
                                   dropna=False)
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

    def subspace_metric_deltas(self, condition_id: str) -> pd.DataFrame:
        """Every metric of one subspace condition's head: n, mean with and without the intervention, delta (as the
        view subspace_effects), in precompute.metrics order."""
        df = self._subspace_deltas([condition_id])
        order = {m: i for i, m in enumerate(METRICS)}
        return df.sort_values("metric", key=lambda s: s.map(order)).reset_index(drop=True).drop(columns="condition_id")

    def _subspace_deltas(self, condition_ids) -> pd.DataFrame:
        """Per subspace condition and metric: n, mean with the intervention (subspace_head_metrics), without it (the
        head's head_attention rows), delta: the rows of the table subspace_effects the job stores (a few hundred rows;
        aggregating subspace_head_metrics took 9 s at 786,432 pairs x 40 conditions), or, in a store written before it
        was stored, :meth:`_subspace_deltas_computed`."""
        from precompute.store.connect import is_stored

        if is_stored(self.connection, "subspace_effects"):
            return sq.ints(self._frame(f"""
                SELECT condition_id, metric, n, mean, baseline, delta FROM subspace_effects
                WHERE {sq.is_in('condition_id', condition_ids)} ORDER BY condition_id, metric
            """), "n")
        return self._subspace_deltas_computed(condition_ids)

    def _subspace_deltas_computed(self, condition_ids) -> pd.DataFrame:
        """:meth:`_subspace_deltas` of an older store. The same numbers as the view subspace_effects (mean of with - without over
        the pairs: a metric is NULL on the same pairs with and without, so the mean of the difference is the difference
        of the means), computed as two column scans instead of its UNPIVOT and join (6 s for 40 conditions x 14k
        pairs)."""
        cols = ", ".join(f"avg({m}) AS {m}" for m in METRICS)
        with_ = self._frame(f"""
            SELECT condition_id, any_value(layer) AS layer, any_value(head) AS head, count(*) AS n, {cols}
            FROM subspace_head_metrics WHERE {sq.is_in('condition_id', condition_ids)} GROUP BY condition_id
        """)
        if with_.empty:
            return pd.DataFrame(columns=["condition_id", "metric", "n", "mean", "baseline", "delta"])
        cells = sorted(set(zip(with_["layer"].astype(int), with_["head"].astype(int))))
        without = self._frame(" UNION ALL ".join(
            f"SELECT {l} AS layer, {h} AS head, {cols} FROM head_attention WHERE layer = {l} AND head = {h}"
            for l, h in cells))  # literal layer/head filters: row-group statistics prune the rest
        a = with_.melt(id_vars=["condition_id", "layer", "head", "n"], value_vars=list(METRICS), var_name="metric",
                       value_name="mean")
        b = without.melt(id_vars=["layer", "head"], value_vars=list(METRICS), var_name="metric", value_name="baseline")
        out = a.merge(b, on=["layer", "head", "metric"], how="left")
        out["delta"] = out["mean"] - out["baseline"]
        return sq.ints(out[["condition_id", "metric", "n", "mean", "baseline", "delta"]], "n")


def compare_deltas(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """B - A of each condition's effect, tested over the queries both runs hold (two :meth:`query_deltas` frames):
    per condition id, ``n_queries`` shared, ``diff`` = the mean over them of delta_B - delta_A, the paired t-test's
    ``t`` and ``p`` (a one-sample t-test of the per-query differences: the query is the unit), ``p_holm`` across the
    conditions tested, and ``significance`` (no star below MIN_QUERIES queries)."""
    both = a.merge(b, on=["condition_id", "qid"], suffixes=("_a", "_b"))
    rows = []
    for cid, g in both.groupby("condition_id", sort=True):
        test = paired_over_queries((g["delta_b"] - g["delta_a"]).to_numpy(dtype="float64"))
        rows.append({"condition_id": cid, "n_queries": len(g), "diff": float(test["mean"]),
                     "t": float(test["t"]), "p": float(test["p"])})
    out = pd.DataFrame(rows, columns=["condition_id", "n_queries", "diff", "t", "p"])
    out["p_holm"] = holm(out["p"].to_numpy()) if len(out) else pd.Series(dtype=float)
    out["significance"] = [stars(p, not_significant="n.s.", n_queries=int(n))
                           for p, n in zip(out["p_holm"], out["n_queries"])]
    return out

