"""Alignment vs behaviour (precompute.analyses.alignment_behaviour.spearman_with_tests) against scipy, seeded."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from precompute.analyses.alignment_behaviour import spearman_with_tests


def test_spearman_matches_scipy_with_a_permutation_p_and_an_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + 0.3 * rng.normal(size=40)
    rho, p, low, high = spearman_with_tests(x, y, permutations=2000)
    assert rho == pytest.approx(spearmanr(x, y).statistic, rel=1e-12)
    assert p < 0.01 and low < rho < high
    assert spearman_with_tests(x, y, permutations=2000) == (rho, p, low, high)  # seeded: the same numbers
    z = rng.normal(size=40)
    _, p_null, _, _ = spearman_with_tests(x, z, permutations=4000)
    assert p_null == pytest.approx(spearmanr(x, z).pvalue, abs=0.03)  # the permutation p near the t approximation
