"""The report's matching heads (``head_contrasts``), tested over queries: per contrast the heads with the largest
query-level effect on the Query<->Document metrics, with the number of queries, the effect's bootstrap interval, d_z
and the Holm-corrected paired t-test; then what the pooled pair-level test would have starred instead (its
Mann-Whitney p, Holm over the same family), so a reader sees which heads keep their stars and which lose them."""

from __future__ import annotations

from precompute.names import CONTRAST_LABELS, CONTRASTS
from precompute.statistics import ALPHA, MIN_QUERIES, fmt_p, holm
from precompute.statistics import stars as mark
from precompute.store.connect import CANDIDATE_METRICS

TOP = 8  # heads shown per contrast


def render(con) -> list[str]:
    """Lines of the matching-head section; [] for a run without head_contrasts or with only pooled (old) tests."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "head_contrasts" not in tables:
        return []
    frame = con.execute("SELECT * FROM head_contrasts").df()
    if frame["n_queries"].isna().all():
        return ["", "Matching heads: this store holds pooled pair-level tests only (schema 4 and older); rerun the "
                "job into a new folder for tests over queries. No stars are drawn from pooled tests."]
    out = ["", "Matching heads (head_contrasts): effect = mean over queries of the per-query difference of group means "
           "[95% bootstrap interval over queries]; paired t-test over queries, Holm over layers x heads x metrics of "
           f"the contrast; metrics {', '.join(CANDIDATE_METRICS)}"]
    for contrast in (c for c in CONTRASTS if c in set(frame["contrast"])):
        rows = frame[frame["contrast"] == contrast].copy()
        rows["pooled_holm"] = holm(rows["pooled_p"].to_numpy())
        n_q = int(rows["n_queries"].max())
        query_level = (rows["p_holm"] < ALPHA) & (rows["n_queries"] >= MIN_QUERIES)
        pooled = rows["pooled_holm"] < ALPHA
        out += ["", f"{CONTRAST_LABELS[contrast]} ({n_q} queries): (head, metric) rows with Holm p < {ALPHA}: pooled "
                f"pair-level Mann-Whitney {int(pooled.sum())} (never starred), query-level {int(query_level.sum())} (kept {int((pooled & query_level).sum())}, "
                f"lost {int((pooled & ~query_level).sum())}, gained {int((~pooled & query_level).sum())}) of {len(rows)}"]
        shown = rows[rows["metric"].isin(CANDIDATE_METRICS)].sort_values(["effect_dz", "effect"], ascending=False,
                                                                          na_position="last").head(TOP)
        head = (f"  {'head':<6} {'metric':<10} {'n_q':>4}  {'effect [interval]':>26}  {'d_z':>6}  {'sig':<3} "
                f"{'p_holm':>7}  | pooled, descriptive: {'cohen_d':>7} {'p_holm':>7}")
        out += [head, "  " + "-" * (len(head) - 2)]
        for r in shown.itertuples():
            interval = f"{r.effect:+.4f} [{r.effect_low:+.4f},{r.effect_high:+.4f}]"
            out.append(f"  {f'{r.layer}.{r.head}':<6} {r.metric:<10} {r.n_queries:>4}  {interval:>26}  "
                       f"{r.effect_dz:>+6.2f}  {mark(r.p_holm, n_queries=r.n_queries):<3} {fmt_p(r.p_holm):>7}  | "
                       f"pooled, descriptive: {r.cohen_d:>+7.2f} {fmt_p(r.pooled_holm):>7}")
    return out


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


def alignment_lines(con, seed: int = 0) -> list[str]:
    """Alignment vs behaviour: Spearman's rho across heads between the QK alignment score (view head_alignment) and the
    query-level effect d_z of q_d, per contrast; [] without both tables."""
    views = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if not {"head_alignment", "head_contrasts"} <= views:
        return []
    frame = con.execute(
        "SELECT c.contrast, a.alignment_score, c.effect_dz FROM head_alignment a JOIN head_contrasts c "
        "ON c.layer = a.layer AND c.head = a.head WHERE c.metric = ? AND c.effect_dz IS NOT NULL "
        "ORDER BY c.contrast, a.layer, a.head", [ALIGNMENT_METRIC]).df()
    if frame.empty:
        return []
    out = ["", f"Alignment vs behaviour: Spearman's rho across heads between the QK alignment score and the query-level "
           f"effect d_z of {ALIGNMENT_METRIC} (two-sided permutation p, {PERMUTATIONS} seeded shuffles; 95% bootstrap "
           "interval over heads)"]
    for contrast, rows in frame.groupby("contrast", sort=False):
        r, p, low, high = spearman_with_tests(rows["alignment_score"], rows["effect_dz"], seed=seed)
        out.append(f"  {CONTRAST_LABELS.get(contrast, contrast):<28} heads {len(rows):>4}  rho {r:+.3f} "
                   f"[{low:+.3f},{high:+.3f}]  p {fmt_p(p)}")
    return out
