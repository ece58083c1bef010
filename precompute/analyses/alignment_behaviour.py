"""Alignment vs behaviour (the paper's next check): Spearman's rho across heads between each head's QK alignment score
(view ``head_alignment``) and its query-level matching effect d_z of ``q_d`` (``head_contrasts``), per contrast, with a
seeded permutation p-value and a bootstrap interval over heads. Read by :meth:`matching_atlas.Run.alignment_behaviour`."""

from __future__ import annotations

from precompute.names import CONTRAST_LABELS

ALIGNMENT_METRIC = "q_d"  # the effect correlated with each head's QK alignment score
PERMUTATIONS = 10_000


def spearman_with_tests(x, y, *, seed: int = 0, permutations: int = PERMUTATIONS, resamples: int = 1000):
    """(rho, two-sided permutation p, low, high): Spearman's rho of x and y, its p from ``permutations`` seeded
    shuffles of y ((count of |rho_perm| >= |rho|) + 1) / (permutations + 1), and a 95% percentile bootstrap interval
    resampling the (x, y) pairs (here heads), seeded."""
    import numpy as np
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def rho(a, b):  # rows of b against a: Pearson of ranks, vectorised over rows
        a, b = rankdata(a, axis=-1), rankdata(b, axis=-1)
        a, b = a - a.mean(axis=-1, keepdims=True), b - b.mean(axis=-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))

    rng = np.random.Generator(np.random.PCG64(seed))
    observed = float(rho(x, y))
    shuffled = rho(x[None], np.stack([rng.permutation(y) for _ in range(permutations)]))
    p = (np.sum(np.abs(shuffled) >= abs(observed) - 1e-12) + 1) / (permutations + 1)
    draws = rng.integers(0, len(x), size=(resamples, len(x)))
    boot = rho(x[draws], y[draws])
    low, high = np.nanpercentile(boot, [2.5, 97.5])
    return observed, float(p), float(low), float(high)


def correlations(con, seed: int = 0, metric: str = ALIGNMENT_METRIC) -> list[dict]:
    """One record per contrast: contrast, label, metric, heads, n_queries (the most any head's test rests on), rho, p,
    low, high; [] without both tables or without a defined effect. ``metric``: the head_contrasts metric whose d_z is
    correlated (the report's is :data:`ALIGNMENT_METRIC`)."""
    views = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if not {"head_alignment", "head_contrasts"} <= views:
        return []
    frame = con.execute(
        "SELECT c.contrast, a.alignment_score, c.effect_dz, c.n_queries FROM head_alignment a JOIN head_contrasts c "
        "ON c.layer = a.layer AND c.head = a.head WHERE c.metric = ? AND c.effect_dz IS NOT NULL "
        "ORDER BY c.contrast, a.layer, a.head", [metric]).df()
    out = []
    for contrast, rows in frame.groupby("contrast", sort=False):
        r, p, low, high = spearman_with_tests(rows["alignment_score"], rows["effect_dz"], seed=seed)
        out.append({"contrast": contrast, "label": CONTRAST_LABELS.get(contrast, contrast), "metric": metric,
                    "heads": len(rows),
                    "n_queries": int(rows["n_queries"].max()), "rho": r, "p": p, "low": low, "high": high})
    return out
