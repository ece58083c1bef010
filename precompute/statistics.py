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


def stars(p: float | None, *, not_significant: str = "") -> str:
    """``***``, ``**``, ``*`` for a corrected p below 0.001, 0.01, 0.05; ``not_significant`` otherwise; "" when untested."""
    if _missing(p):
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


def query_resamples(n_queries: int, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """[n_resamples, n_queries] int32: how many times each query is drawn in each resample (every row sums to
    ``n_queries``)."""
    if n_queries < 1 or n_resamples < 1:
        raise ValueError(f"a bootstrap needs at least one query and one resample (got {n_queries}, {n_resamples})")
    rng = np.random.Generator(np.random.PCG64(seed))
    draws = rng.integers(0, n_queries, size=(n_resamples, n_queries))
    flat = draws + (np.arange(n_resamples) * n_queries)[:, None]
    return np.bincount(flat.ravel(), minlength=n_resamples * n_queries).reshape(n_resamples, n_queries).astype(np.int32)


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
    weights = query_resamples(n_queries, n_resamples, seed).astype(np.float64)
    values = np.concatenate([np.asarray(statistic(weights[i : i + chunk])) for i in range(0, n_resamples, chunk)])
    tail = (1.0 - level) / 2.0 * 100.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a variant undefined in every resample: NaN, said by NaN
        low, high = np.nanpercentile(values, [tail, 100.0 - tail], axis=0)
    return estimate, low, high


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
