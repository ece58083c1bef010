"""Robust patching summaries: one pair whose corruption barely moved the score makes the plain mean explode and
leaves the median, the ratio of sums and the thresholded mean where they were; intervals resample queries, not pairs,
and are reproducible byte for byte from the seed; heads rank by the lower bound."""

from __future__ import annotations

import numpy as np
import pandas as pd

from precompute.analyses.patching_ranking import SummarySettings, rank_heads, summarise
from precompute.statistics import bootstrap_over_queries, query_resamples, weighted_median

SETTINGS = SummarySettings(min_delta=0.1, epsilon=1e-6, n_resamples=400, seed=7)


def _experiment(queries=10, per_query=5, seed=0):
    """(query index, clean - corrupted, patched - corrupted of two activations recovering 30% and 60%)."""
    rng = np.random.default_rng(seed)
    query_index = np.repeat(np.arange(queries), per_query)
    diff = rng.uniform(0.5, 2.0, queries * per_query)
    recovered = diff[:, None] * np.array([0.3, 0.6]) + rng.normal(0, 0.05, (len(diff), 2))
    return query_index, diff, recovered


def test_one_near_zero_difference_makes_the_mean_explode_and_nothing_else():
    query_index, diff, recovered = _experiment()
    before = summarise(query_index, 10, diff, recovered, SETTINGS)
    diff[7], recovered[7] = 1e-4, (0.05, -0.04)  # |clean - corrupted| = 1e-4: effects of +500 and -400
    after = summarise(query_index, 10, diff, recovered, SETTINGS)
    assert np.all(np.abs(after["mean"] - before["mean"]) > 5)
    for name in ("median", "ratio", "tmean"):
        np.testing.assert_allclose(after[name], before[name], atol=0.01, err_msg=name)
        assert np.all(after[f"{name}_low"] <= after[name]) and np.all(after[name] <= after[f"{name}_high"])
        assert np.all(after[f"{name}_high"] - after[f"{name}_low"] < 0.1), name  # the intervals stay narrow too
    assert after["n_excluded"][0] == 1 and before["n_excluded"][0] == 0  # below --patching-min-delta: counted


def test_pairs_where_the_corruption_raised_the_score_are_counted_and_kept():
    query_index, diff, recovered = _experiment()
    diff[:3] *= -1
    recovered[:3] *= -1
    out = summarise(query_index, 10, diff, recovered, SETTINGS)
    assert out["n_raised"][0] == 3 and out["n_pairs"][0] == 50 and out["n_queries"][0] == 10
    np.testing.assert_allclose(out["ratio"], [0.3, 0.6], atol=0.02)


def test_intervals_resample_queries_and_are_reproducible_byte_for_byte():
    weights = query_resamples(6, 50, seed=3)
    assert weights.shape == (50, 6) and np.all(weights.sum(1) == 6)
    assert weights.tobytes() == query_resamples(6, 50, seed=3).tobytes()
    assert weights.tobytes() != query_resamples(6, 50, seed=4).tobytes()
    query_index, diff, recovered = _experiment()
    a = summarise(query_index, 10, diff, recovered, SETTINGS)
    b = summarise(query_index, 10, diff, recovered, SETTINGS)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    # every pair of a query moves with it: a query's pairs all identical, its spread is between queries only
    per_query = np.repeat([0.1, 0.2, 0.3, 0.4, 0.5], 20)
    estimate, low, high = bootstrap_over_queries(lambda w: w[:, np.repeat(np.arange(5), 20)] @ per_query / (20 * w.sum(1)),
                                                 5, n_resamples=400, seed=0)
    assert abs(estimate - 0.3) < 1e-12 and high - low > 0.1  # 5 queries, not 100 pairs: a wide interval


def test_weighted_median_is_the_median_of_the_repeated_sample():
    rng = np.random.default_rng(1)
    values, weights = rng.normal(size=(9, 3)), rng.integers(0, 4, size=(5, 9))
    got = weighted_median(values, weights)
    for r in range(5):
        for c in range(3):
            np.testing.assert_allclose(got[r, c], np.median(np.repeat(values[:, c], weights[r])))


def test_heads_rank_by_the_lower_bound_nan_last():
    assert rank_heads(np.array([0.1, np.nan, 0.5, 0.1])).tolist() == [2, 4, 1, 3]


def test_the_stored_moments_are_pandas_count_mean_and_sd_of_the_defined_effects():
    query_index, diff, recovered = _experiment()
    diff[[4, 11]] = 1e-7  # below epsilon: these two pairs have no effect
    out = summarise(query_index, 10, diff, recovered, SETTINGS)
    effects = pd.DataFrame(recovered / diff[:, None]).where(np.repeat(np.abs(diff)[:, None] >= SETTINGS.epsilon, 2, 1))
    assert (out["n_null"] == effects.isna().sum().to_numpy()).all() and out["n_null"][0] == 2
    np.testing.assert_allclose(out["mean"], effects.mean().to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(out["sd"], effects.std().to_numpy(), rtol=1e-12)  # pandas: ddof=1, NaN skipped
    one = summarise(np.zeros(1, dtype=int), 1, np.ones(1), np.ones((1, 2)), SETTINGS)
    assert np.isnan(one["sd"]).all() and (one["mean"] == 1).all()  # no sd from one pair
