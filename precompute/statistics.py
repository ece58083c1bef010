"""The statistics shared by the job, the report and the app: Holm's correction, the family-wise error rate and how
a corrected p-value is written (stars and digits); bootstrap intervals over queries, seeded, and the pair-level
statistics they resample (per-query sums, weighted medians).

One place, so that a head marked ``**`` on the app's head atlas is the head the report marks ``**``, and every
interval of the project resamples the same way. Imports numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ALPHA = 0.05  # family-wise error rate: a Holm-corrected p below it is significant
MARKS: tuple[tuple[float, str], ...] = ((0.001, "***"), (0.01, "**"), (0.05, "*"))
STARS_LEGEND = "* p<0.05  ** p<0.01  *** p<0.001 (Holm-corrected)"
# Below this many queries no test earns a star: a t-test over a handful of queries rests on normality it cannot check,
# and the question (does the effect replicate over queries?) has too few replicates to answer. Tests are still stored.
MIN_QUERIES = 10
FEW_QUERIES_WARNING = f"fewer than {MIN_QUERIES} queries: no significance stars are shown (too few replicates)"


def holm(pvalues: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values, in the input order; None/NaN stays NaN and is not counted as a test.

    The i-th smallest of m p-values becomes max_{j <= i} (m - j + 1) p_(j), capped at 1 (i, j 1-based).
    """
    p = np.array([np.nan if v is None else v for v in pvalues], dtype=np.float64)
    out = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    scaled = (len(order) - np.arange(len(order))) * p[order]
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def _missing(p: float | None) -> bool:
    return p is None or (isinstance(p, float) and np.isnan(p))


def stars(p: float | None, *, not_significant: str = "", n_queries: int | None = None) -> str:
    """``***``, ``**``, ``*`` for a corrected p below 0.001, 0.01, 0.05; ``not_significant`` otherwise; "" when untested
    or when the test rests on fewer than ``MIN_QUERIES`` queries (``n_queries`` given)."""
    if _missing(p) or (n_queries is not None and n_queries < MIN_QUERIES):
        return ""
    for level, mark in MARKS:
        if p < level:
            return mark
    return not_significant


def fmt_p(p: float | None, *, missing: str = "-") -> str:
    """A p-value in a table cell: ``1.2e-05`` below 0.001, else three decimals; ``missing`` when untested."""
    if _missing(p):
        return missing
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


# -- bootstrap over queries ------------------------------------------------------------------------------------------
#
# The query is the unit of replication (pairs of one query share its text, its judgments and the model's reading of
# it), so an interval resamples queries, never pairs: a resample draws as many queries as the run has, with
# replacement, and every pair of a drawn query counts as many times as the query was drawn. The draws come from
# numpy's PCG64 seeded with the run's seed, in the order of the queries as given (callers sort them by qid), so an
# interval is reproducible byte for byte from (data, n_resamples, seed).

BOOTSTRAP_RESAMPLES = 1000  # resamples of a bootstrap interval (percentile method)
CI_LEVEL = 0.95


def query_resamples(n_queries: int, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, *,
                    chunk: int = 250) -> np.ndarray:
    """[n_resamples, n_queries] int32: how many times each query is drawn in each resample (every row sums to
    ``n_queries``).

    The draws are int32 (numpy's bounded generator yields the same values for int32 as for int64 below 2**31, so
    the resamples are those of earlier versions) and are counted ``chunk`` resamples at a time: at 1,000 queries
    and 2,000 resamples the int64 draws, their offsets and one bincount of everything held 48 MB at once, a peak
    that grew with the queries (bench/memory.py); this holds the 8 MB of draws, the 8 MB of counts and one chunk's.
    """
    if n_queries < 1 or n_resamples < 1:
        raise ValueError(f"a bootstrap needs at least one query and one resample (got {n_queries}, {n_resamples})")
    rng = np.random.Generator(np.random.PCG64(seed))
    draws = rng.integers(0, n_queries, size=(n_resamples, n_queries), dtype=np.int32)
    counts = np.empty((n_resamples, n_queries), dtype=np.int32)
    for start in range(0, n_resamples, chunk):
        block = draws[start : start + chunk]
        flat = block + (np.arange(len(block), dtype=np.int64) * n_queries)[:, None]
        counts[start : start + len(block)] = np.bincount(flat.ravel(), minlength=len(block) * n_queries).reshape(
            len(block), n_queries)
    return counts


def bootstrap_over_queries(statistic, n_queries: int, *, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                           level: float = CI_LEVEL, chunk: int = 250) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, low, high) of a statistic computed from per-query data, with a percentile bootstrap interval over
    queries (see above).

    ``statistic(weights)`` takes ``weights`` [r, n_queries] float64 (how many times each query counts in each of r
    samples; the full sample is a row of ones) and returns [r, ...] values, vectorised over any trailing shape (many
    heads at once). The estimate is its value on the full sample; low and high are the (1 - level) / 2 and
    (1 + level) / 2 percentiles over the resamples where it is defined (NaN values, e.g. a ratio over an empty
    denominator, are left out; all NaN gives NaN). Resamples are evaluated ``chunk`` at a time to bound memory.

    For example the mean over queries of one value per query, with its interval::

        per_query = np.array([0.1, 0.3, 0.2])
        estimate, low, high = bootstrap_over_queries(lambda w: (w @ per_query) / w.sum(1), 3, seed=0)
    """
    import warnings

    estimate = np.asarray(statistic(np.ones((1, n_queries))))[0]
    weights = query_resamples(n_queries, n_resamples, seed, chunk=chunk)  # int32; float64 one chunk at a time
    values = np.concatenate([np.asarray(statistic(weights[i : i + chunk].astype(np.float64)))
                             for i in range(0, n_resamples, chunk)])
    tail = (1.0 - level) / 2.0 * 100.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a variant undefined in every resample: NaN, said by NaN
        low, high = np.nanpercentile(values, [tail, 100.0 - tail], axis=0)
    return estimate, low, high


def paired_over_queries(differences: np.ndarray) -> dict[str, np.ndarray]:
    """The paired test over queries of per-query differences ``differences`` [..., n_queries] (one value per query
    that has both groups; a NaN row gives NaN): mean, sd (ddof=1), the standardised effect d_z = mean / sd and a
    two-sided one-sample t-test of the mean against 0, which is the paired t-test of the two groups' per-query means.
    t, p and d_z are NaN below 2 queries or where every query has the same difference (sd = 0)."""
    from scipy import stats

    d = np.asarray(differences, dtype=np.float64)
    n = d.shape[-1]
    mean = d.mean(axis=-1) if n else np.full(d.shape[:-1], np.nan)
    if n < 2:
        nan = np.full(d.shape[:-1], np.nan)
        return {"mean": mean, "sd": nan, "d_z": nan, "t": nan, "p": nan}
    sd = d.std(axis=-1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        defined = sd > 1e-12 * np.maximum(np.abs(mean), 1e-300)
        t = np.where(defined, mean / (sd / np.sqrt(n)), np.nan)
        d_z = np.where(defined, mean / sd, np.nan)
    p = np.where(np.isnan(t), np.nan, 2.0 * stats.t.sf(np.abs(np.nan_to_num(t)), n - 1))
    return {"mean": mean, "sd": sd, "d_z": d_z, "t": t, "p": p}


def query_sums(values: np.ndarray, query_index: np.ndarray, n_queries: int) -> np.ndarray:
    """[n_queries, ...]: ``values`` [pairs, ...] summed per query (``query_index`` [pairs]: each pair's query, 0-based);
    NaN counts as 0."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64))
    out = np.zeros((n_queries, *values.shape[1:]))
    np.add.at(out, query_index, values)
    return out


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Medians of the columns of ``values`` [pairs, k] when pair i counts ``weights[r, i]`` times, for every row r of
    ``weights`` [r, pairs]: [r, k]. The midpoint of the lower and upper weighted medians, so unit weights give the
    ordinary median (the mean of the two middle values of an even count); NaN values are left out, and a column with
    no weight left is NaN."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, axis=0, kind="stable")  # NaN last
    ordered = np.take_along_axis(values, order, axis=0)  # [pairs, k]
    w = weights[:, order] * ~np.isnan(ordered)  # [r, pairs, k]: each column's weights in its sorted order
    cum = np.cumsum(w, axis=1)
    half = cum[:, -1:, :] / 2.0
    lower = np.argmax(cum >= half, axis=1)  # [r, k]
    upper = np.argmax(cum > half, axis=1)
    columns = np.arange(values.shape[1])
    out = (ordered[lower, columns] + ordered[upper, columns]) / 2.0
    return np.where(half[:, 0, :] > 0, out, np.nan)
