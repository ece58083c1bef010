"""Attribution patching against exact patching on the reference model: 50 tfc1 inputs of DL20 (10 queries x 5 pairs),
every head, ranked by its ratio of sums (the summary's statistic).

Measured (2026-12-05, 2 loaded CPU cores): Spearman 0.993 over the 72 heads and 9 of the top 10 shared. The floors
below (0.95 and 7) leave room for another BLAS's rounding while failing for any real fault: a wrong sign, site or
position in the estimate drops the correlation below 0.5 and the overlap to chance (1 or 2 of 10)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.shared, pytest.mark.slow]

SPEARMAN_FLOOR, TOP10_FLOOR = 0.95, 7


def per_head_ratio(table):
    frame = table.to_pandas()
    grouped = frame.assign(recovered=frame.patched - frame.corrupted, diff=frame.clean - frame.corrupted).groupby(
        ["layer", "head"])[["recovered", "diff"]].sum()
    return grouped.recovered / grouped["diff"]


def test_attribution_ranks_the_heads_as_exact_patching_does(dl20_dir, minilm_dir, tmp_path):
    from scipy.stats import spearmanr

    from precompute.analyses import patching as P
    from precompute.analyses.patching_methods import run_chunk
    from precompute.analyses import patching_inputs as I
    from precompute.datasets import resolve
    from precompute.families.loading import load
    from precompute.pairs import build_pairs

    pairs = build_pairs(resolve(str(dl20_dir), tmp_path / "cache"), easy_negatives=20, max_queries=10).pairs
    lm = load(str(minilm_dir), "cpu", "float32")
    items, _ = I.experiment_inputs("tfc1", lm, pairs, 512, per_query=5, seed=0)
    assert len(items) == 50 and len({i.qid for i in items}) == 10
    sites = P.head_sites("tfc1", *lm.shape)
    attributed, exact = (per_head_ratio(run_chunk(lm, "tfc1", method, items, sites, batch_size=32, max_length=512))
                         for method in ("attribution", "exact"))
    rho = spearmanr(attributed, exact).statistic
    top = lambda s: set(s.sort_values(ascending=False).index[:10])  # noqa: E731
    overlap = len(top(attributed) & top(exact))
    print(f"attribution vs exact over {len(attributed)} heads: Spearman {rho:.3f}, top-10 overlap {overlap}")
    assert rho >= SPEARMAN_FLOOR and overlap >= TOP10_FLOOR, (rho, overlap)
