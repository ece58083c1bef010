"""precompute.statistics: the one Holm correction (the job's ablation_summary and head_contrasts, the report and the
app all use it), against its definition computed independently, and the stars and p-value cells."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from precompute import statistics as S


def holm_by_definition(p: list[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values straight from the definition: the adjusted p of the i-th smallest of the m
    tested p-values is min(1, max over j <= i of (m - j + 1) p_(j)); untested (None) stays None."""
    tested = sorted((v, i) for i, v in enumerate(p) if v is not None)
    m = len(tested)
    out: list[float | None] = [None] * len(p)
    for rank, (_, i) in enumerate(tested):
        out[i] = min(1.0, max((m - j) * tested[j][0] for j in range(rank + 1)))
    return out


def test_holm_by_hand():
    # m = 4 tests; sorted .005 .01 .03 .04 -> 4*.005=.02, 3*.01=.03, 2*.03=.06, max(.06, 1*.04)=.06
    np.testing.assert_allclose(S.holm([0.01, 0.04, 0.03, 0.005, None]), [0.03, 0.06, 0.06, 0.02, np.nan])
    np.testing.assert_array_equal(S.holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1, monotone
    assert len(S.holm([])) == 0 and np.isnan(S.holm([None])).all() and np.isnan(S.holm([float("nan")])).all()


@pytest.mark.parametrize("seed", range(20))
def test_holm_equals_its_definition(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    p = [None if rng.random() < 0.2 else float(v) for v in rng.random(n) ** 3]
    if seed % 4 == 0:  # ties
        p = [None if v is None else round(v, 1) for v in p]
    got = S.holm(p)
    for g, want in zip(got, holm_by_definition(p)):
        assert (math.isnan(g) and want is None) or g == pytest.approx(want, rel=1e-12)


def test_holm_is_monotone_in_p_and_never_below_p():
    p = [0.2, 0.001, 0.04, 0.04, 0.3, 0.0]
    adjusted = S.holm(p)
    for (a, pa), (b, pb) in itertools.combinations(zip(adjusted, p), 2):
        assert (pa <= pb) <= (a <= b)  # a smaller p never gets a larger adjusted p
    assert all(a >= v for a, v in zip(adjusted, p))


def test_stars_and_cells():
    assert [S.stars(p) for p in (None, float("nan"), 0.2, 0.04, 0.009, 0.0001)] == ["", "", "", "*", "**", "***"]
    assert S.stars(0.2, not_significant="n.s.") == "n.s."
    assert [S.fmt_p(p) for p in (None, 0.5, 0.0004)] == ["-", "0.500", "4.0e-04"]


@pytest.mark.parametrize("n_queries, n_resamples, seed", [(3, 7, 1), (97, 600, 0), (1000, 300, 5)])
def test_resamples_are_the_int64_draws_counted_at_once(n_queries, n_resamples, seed):
    """The chunked int32 counting gives the resamples of the one-shot int64 counting it replaced (same stream)."""
    from precompute.statistics import query_resamples

    draws = np.random.Generator(np.random.PCG64(seed)).integers(0, n_queries, size=(n_resamples, n_queries))
    flat = draws + (np.arange(n_resamples) * n_queries)[:, None]
    expected = np.bincount(flat.ravel(), minlength=n_resamples * n_queries).reshape(n_resamples, n_queries)
    got = query_resamples(n_queries, n_resamples, seed, chunk=64)
    assert got.dtype == np.int32 and (got == expected).all() and (got.sum(axis=1) == n_queries).all()
