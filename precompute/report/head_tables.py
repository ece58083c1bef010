"""The report's matching heads (``head_contrasts``), tested over queries: per contrast the heads with the largest
query-level effect on the Query<->Document metrics, with the number of queries, the effect's bootstrap interval, d_z
and the Holm-corrected paired t-test; then what the pooled pair-level test would have starred instead (its
Mann-Whitney p, Holm over the same family), so a reader sees which heads keep their stars and which lose them."""

from __future__ import annotations

from precompute.analyses.alignment_behaviour import ALIGNMENT_METRIC, PERMUTATIONS
from precompute.metrics import holm_family
from precompute.names import CONTRAST_LABELS, CONTRASTS
from precompute.statistics import ALPHA, MIN_QUERIES, fmt_p, holm
from precompute.statistics import stars as mark
from precompute.store.connect import CANDIDATE_METRICS

TOP = 8  # heads shown per contrast


def render(frame) -> list[str]:
    """Lines of the matching-head section for a run's :meth:`matching_atlas.Run.head_contrasts` frame; [] for None (a
    run without head_contrasts), one line for a run with only pooled (old) tests."""
    if frame is None:
        return []
    frame = frame.copy()
    if frame["n_queries"].isna().all():
        return ["", "Matching heads: this store holds pooled pair-level tests only (stores written before schema "
                "version 6); rerun the job into a new folder for tests over queries. No stars are drawn from pooled "
                "tests."]
    out = ["", "Matching heads (head_contrasts): effect = mean over queries of the per-query difference of group means "
           "[95% bootstrap interval over queries]; paired t-test over queries, Holm over layers x heads x metrics of "
           f"the contrast within each family of metrics (attention, value-weighted); metrics {', '.join(CANDIDATE_METRICS)}"]
    frame["family"] = [holm_family(m) for m in frame["metric"]]
    for contrast in (c for c in CONTRASTS if c in set(frame["contrast"])):
        rows = frame[frame["contrast"] == contrast].copy()
        n_q = int(rows["n_queries"].max())
        out.append("")
        for family, members in rows.groupby("family", sort=True):
            pooled_holm = holm(members["pooled_p"].to_numpy())
            rows.loc[members.index, "pooled_holm"] = pooled_holm
            query_level = (members["p_holm"] < ALPHA) & (members["n_queries"] >= MIN_QUERIES)
            pooled = pooled_holm < ALPHA
            out.append(f"{CONTRAST_LABELS[contrast]} ({n_q} queries), {family} metrics: (head, metric) rows with Holm "
                       f"p < {ALPHA}: pooled pair-level Mann-Whitney {int(pooled.sum())} (never starred), query-level "
                       f"{int(query_level.sum())} (kept {int((pooled & query_level).sum())}, lost "
                       f"{int((pooled & ~query_level).sum())}, gained {int((~pooled & query_level).sum())}) of {len(members)}")
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


def alignment_lines(run, seed: int = 0) -> list[str]:
    """Alignment vs behaviour: the rows of :meth:`matching_atlas.Run.alignment_behaviour` (Spearman's rho across heads
    between the QK alignment score and the query-level effect d_z of q_d, per contrast); [] without them."""
    frame = run.alignment_behaviour(seed=seed)
    if frame.empty:
        return []
    out = ["", f"Alignment vs behaviour: Spearman's rho across heads between the QK alignment score and the query-level "
           f"effect d_z of {ALIGNMENT_METRIC} (two-sided permutation p, {PERMUTATIONS} seeded shuffles; 95% bootstrap "
           "interval over heads)"]
    for r in frame.itertuples():
        out.append(f"  {r.label:<28} heads {r.heads:>4}  rho {r.rho:+.3f} [{r.low:+.3f},{r.high:+.3f}]  p {fmt_p(r.p)}")
    return out
