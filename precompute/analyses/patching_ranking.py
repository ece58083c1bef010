"""Patching effects summarised so that a near-zero score difference cannot dominate them, with intervals over
queries, and heads ranked by how surely they recover the score.

A pair's effect ``(patched - corrupted) / (clean - corrupted)`` divides by the score difference the corruption made;
where that difference is near zero one pair's effect can be +8 or -20 and its plain mean over pairs says nothing.
Per patched activation (layer x component x segment, or layer x head) the summary keeps three statistics that such a
pair cannot move far, each with a bootstrap interval over queries (:func:`precompute.statistics.bootstrap_over_queries`:
queries resampled, seeded, reproducible byte for byte):

* ``median``: the median of the pairs' effects (pairs with ``|clean - corrupted| < EPSILON`` have none);
* ``ratio``: the ratio of sums, ``sum(patched - corrupted) / sum(clean - corrupted)`` over all pairs: the share of
  the experiment's total score difference the activation recovers (a pair weighs by its difference, so a near-zero
  one weighs nearly nothing);
* ``tmean``: the mean effect over the pairs whose ``|clean - corrupted|`` is at least ``min_delta``
  (``--patching-min-delta``); the others are counted as excluded.

The plain mean over pairs is kept beside them (``mean``, no interval) to show what they replace. Pairs where the
corruption raised the score (``corrupted > clean``) are counted; they stay in every statistic (their effect is still
the recovered share of their difference). Heads are ranked by the lower bound of the ratio of sums' interval: a head
ranks high only when it recovers much of the difference on every resample of the queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from precompute.statistics import BOOTSTRAP_RESAMPLES, CI_LEVEL, bootstrap_over_queries, query_sums, weighted_median

RANK_BY = "ratio_low"  # heads are ranked by the lower interval bound of the ratio of sums
# --patching-min-delta's default per score scale (docs/patching.md, "Near-zero differences"): 0.05 logits (the odds of
# relevance moved by 5%), and on the probability scale what 0.05 logits is where probability moves most (p = 0.5,
# dp/dlogit = 1/4).
MIN_DELTA = {"logit": 0.05, "probability": 0.0125}
STATISTICS = ("median", "ratio", "tmean")  # each stored with _low and _high
VARIANT_BLOCK = 64  # variants summarised at once (bounds the weighted medians' [resamples, pairs, variants] array)


@dataclass(frozen=True)
class SummarySettings:
    """What a summary depends on besides the stored scores (recorded in the manifest's patching section)."""

    min_delta: float
    epsilon: float
    n_resamples: int = BOOTSTRAP_RESAMPLES
    seed: int = 0
    level: float = CI_LEVEL


def summarise(query_index: np.ndarray, n_queries: int, diff: np.ndarray, recovered: np.ndarray,
              settings: SummarySettings) -> dict[str, np.ndarray]:
    """The summary of ``k`` patched activations over the same pairs: one value per activation of ``median``,
    ``ratio``, ``tmean`` (each with ``_low`` and ``_high``), ``mean`` and ``sd`` (the plain moments of the defined
    effects, so that a page showing the whole run reads them instead of scanning every effect), and per-experiment
    counts (``n_queries``, ``n_pairs``, ``n_excluded``, ``n_raised``, ``n_null``).

    query_index [pairs]: each pair's query (0..n_queries-1); diff [pairs]: clean - corrupted; recovered [pairs, k]:
    patched - corrupted of each activation.
    """
    diff = np.asarray(diff, dtype=np.float64)
    recovered = np.asarray(recovered, dtype=np.float64).reshape(len(diff), -1)
    k = recovered.shape[1]
    defined = np.abs(diff) >= settings.epsilon
    kept = np.abs(diff) >= settings.min_delta
    with np.errstate(divide="ignore", invalid="ignore"):
        effects = np.where(defined[:, None], recovered / diff[:, None], np.nan)  # [pairs, k]
    out: dict[str, np.ndarray] = {name: np.full(k, np.nan) for name in
                                  ("mean", "sd", *(f"{s}{part}" for s in STATISTICS for part in ("", "_low", "_high")))}
    counts = {"n_queries": n_queries, "n_pairs": len(diff), "n_excluded": int((~kept).sum()),
              "n_raised": int((diff < 0).sum()), "n_null": int((~defined).sum())}
    if defined.any():
        out["mean"] = np.nanmean(effects[defined], axis=0)
    if defined.sum() > 1:
        out["sd"] = np.nanstd(effects[defined], axis=0, ddof=1)
    d_q = query_sums(diff, query_index, n_queries)  # [queries]
    kept_q = query_sums(kept.astype(float), query_index, n_queries)
    for start in range(0, k, VARIANT_BLOCK):
        block = slice(start, min(k, start + VARIANT_BLOCK))
        n_q = query_sums(recovered[:, block], query_index, n_queries)  # [queries, b]
        e_q = query_sums(np.where(kept[:, None], effects[:, block], 0.0), query_index, n_queries)
        e_defined = effects[defined, block]
        q_defined = query_index[defined]

        def median(w, e=e_defined, q=q_defined):
            return weighted_median(e, w[:, q]) if len(q) else np.full((len(w), e.shape[1]), np.nan)

        estimates = {"median": bootstrap_over_queries(median, n_queries, n_resamples=settings.n_resamples,
                                                      seed=settings.seed, level=settings.level),
                     **ratio_and_tmean(d_q, kept_q, n_q, e_q, settings)}
        for name, (estimate, low, high) in estimates.items():
            out[name][block], out[f"{name}_low"][block], out[f"{name}_high"][block] = estimate, low, high
    return {**out, **{name: np.full(k, value) for name, value in counts.items()}}


def ratio_and_tmean(d_q: np.ndarray, kept_q: np.ndarray, n_q: np.ndarray, e_q: np.ndarray, settings: SummarySettings
                    ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(estimate, low, high) of the ratio of sums and of the thresholded mean of ``k`` activations, with their
    bootstrap intervals over the queries, from per-query sums alone: d_q sum of clean - corrupted, kept_q pairs whose
    |clean - corrupted| reaches min_delta (each [queries], shared by the activations, or [queries, k]), n_q
    [queries, k] sum of patched - corrupted, e_q [queries, k] sum of the kept pairs' effects. The job's summary calls
    it; so does the reader for a slice of the run's pairs, from sums that SQL computes per query."""
    n_queries = len(d_q)

    def per_activation(total: np.ndarray) -> np.ndarray:
        return total[:, None] if total.ndim == 1 else total

    def ratio(w):
        with np.errstate(divide="ignore", invalid="ignore"):
            return (w @ n_q) / per_activation(w @ d_q)

    def tmean(w):
        with np.errstate(divide="ignore", invalid="ignore"):
            return (w @ e_q) / per_activation(w @ kept_q)

    return {name: bootstrap_over_queries(statistic, n_queries, n_resamples=settings.n_resamples, seed=settings.seed,
                                         level=settings.level)
            for name, statistic in (("ratio", ratio), ("tmean", tmean))}


def rank_heads(values: np.ndarray) -> np.ndarray:
    """1-based ranks by ``values`` (the heads' lower ratio bounds), largest first; NaN ranks last, ties keep order."""
    order = np.argsort(np.where(np.isnan(values), np.inf, -values), kind="stable")
    ranks = np.empty(len(values), dtype=np.int32)
    ranks[order] = np.arange(1, len(values) + 1)
    return ranks


def summary_columns(rows: dict[str, np.ndarray], settings: SummarySettings) -> dict[str, np.ndarray]:
    """``patching_summary`` columns from ``patching_effects`` rows of any experiments and methods (arrays: experiment,
    method, patch_id, qid, layer, head (NaN or -1 for blocks), component, segment, clean, corrupted, patched)."""
    groups = np.stack([rows["experiment"].astype(str), rows["method"].astype(str)], axis=1)
    out: dict[str, list] = {}
    for experiment, method in sorted({tuple(g) for g in groups}):
        take = (groups[:, 0] == experiment) & (groups[:, 1] == method)
        part = {k: v[take] for k, v in rows.items()}
        for key, values in _summary_of(part, settings).items():
            out.setdefault(key, []).append(values)
        n = len(out["layer"][-1])
        out.setdefault("experiment", []).append(np.full(n, experiment, dtype=object))
        out.setdefault("method", []).append(np.full(n, method, dtype=object))
    return {k: np.ma.concatenate(v) for k, v in out.items()}


def _summary_of(rows: dict[str, np.ndarray], settings: SummarySettings) -> dict[str, np.ndarray]:
    """The summary of one (experiment, method): every site over the same pairs."""
    layer = np.asarray(rows["layer"], dtype=np.int64)
    head = np.nan_to_num(np.ma.filled(np.ma.asarray(rows["head"], dtype=np.float64), np.nan), nan=-1).astype(np.int64)
    component, segment = rows["component"].astype(str), rows["segment"].astype(str)
    keys = np.char.add(np.char.add(np.char.add(layer.astype(str), "|"), np.char.add(component, "|")),
                       np.char.add(np.char.add(segment, "|"), head.astype(str)))
    _, first, site_of = np.unique(keys, return_index=True, return_inverse=True)
    pair_ids, pair_of = np.unique(rows["patch_id"], return_inverse=True)
    recovered = np.full((len(pair_ids), len(first)), np.nan)
    recovered[pair_of, site_of] = np.asarray(rows["patched"], np.float64) - np.asarray(rows["corrupted"], np.float64)
    if np.isnan(recovered).any():
        raise ValueError("patching_effects does not hold every site for every input pair of an experiment and method")
    diff = np.zeros(len(pair_ids))
    diff[pair_of] = np.asarray(rows["clean"], np.float64) - np.asarray(rows["corrupted"], np.float64)
    qid = np.empty(len(pair_ids), dtype=object)
    qid[pair_of] = np.asarray(rows["qid"], dtype=object)
    queries, query_index = np.unique(qid.astype(str), return_inverse=True)
    stats = summarise(query_index, len(queries), diff, recovered, settings)
    out = {"layer": layer[first], "head": np.ma.masked_less(head[first], 0), "component": component[first].astype(object),
           "segment": segment[first].astype(object), **stats}
    is_head = out["component"] == "head"
    rank = np.ma.masked_all(len(first), dtype=np.int32)
    if is_head.any():
        rank[is_head] = rank_heads(stats[RANK_BY][is_head])
    out["rank"] = rank
    return out


def settings_of(info) -> SummarySettings:
    """The summary settings a run recorded (its manifest's ``patching`` section; older runs: the defaults)."""
    from precompute.names import PATCHING_EPSILON

    scale = getattr(info, "score", None) or "logit"
    return SummarySettings(
        min_delta=getattr(info, "min_delta", None) or MIN_DELTA[scale], epsilon=PATCHING_EPSILON,
        n_resamples=getattr(info, "resamples", None) or BOOTSTRAP_RESAMPLES, seed=getattr(info, "seed", None) or 0,
        level=getattr(info, "level", None) or CI_LEVEL)


def read_summary(con, info):
    """``patching_summary`` of an open run (:func:`precompute.store.connect.connect`) as a pandas DataFrame: the stored
    table, or for a store of schema version 3 and older (which has none) the same summary computed from its
    ``patching_effects`` with the run's recorded settings (``info``: the manifest's patching section, or None)."""
    import pandas as pd

    names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "patching_summary" in names:
        return con.execute("SELECT * FROM patching_summary").df()
    if "patching_effects" not in names:
        return pd.DataFrame()
    table = con.sql(
        "SELECT e.experiment, e.method, e.patch_id, p.qid, e.layer, e.head, e.component, e.segment, e.clean, "
        "e.corrupted, e.patched FROM patching_effects e JOIN pairs p USING (pair_id)").to_arrow_table()
    columns = summary_columns(rows_of(table), settings_of(info))
    return pd.DataFrame({k: np.ma.filled(v.astype(float), np.nan) if k in ("head", "rank") else np.ma.getdata(v)
                         for k, v in columns.items()})


def rows_of(table) -> dict[str, np.ndarray]:
    """The arrays :func:`summary_columns` reads from a pyarrow table of patching_effects rows with a ``qid`` column
    (each input's query)."""
    names = ("experiment", "method", "patch_id", "qid", "layer", "component", "segment", "clean", "corrupted",
             "patched")
    rows = {name: table.column(name).to_numpy(zero_copy_only=False) for name in names}
    rows["head"] = np.array([np.nan if h is None else h for h in table.column("head").to_pylist()], dtype=float)
    return rows


def columns_table(cols: dict):
    """A pyarrow table of columns given as numpy arrays (masked values become NULL)."""
    import pyarrow as pa

    return pa.table({name: pa.array(np.ma.getdata(v), mask=np.ma.getmaskarray(v)) if np.ma.isMaskedArray(v)
                     else pa.array(v) for name, v in cols.items()})
