"""The report's activation-patching summary, per experiment and method (docs/patching.md): the heads ranked by the
lower bound of their ratio of sums, each with its median, ratio of sums and thresholded mean and their bootstrap
intervals over queries; the excluded and raised pairs; where the heads the plain mean ranked first stand now; how
attribution and exact patching agree on the heads both computed; and the components by layer.

Patching effects are not tested for significance (no Holm family): the intervals say how precisely each statistic
is known over the experiment's queries. Runs of schema version 3 and older get the same summary computed from their
stored effects (precompute.analyses.patching_ranking.read_summary).
"""

from __future__ import annotations

from precompute.names import FINAL_COMPONENT, PATCH_COMPONENTS

TOP_HEADS = 10
SCALES = {"logit": "the relevance logit (log-odds of relevance for two-way models)", "probability":
          "the probability of relevance", None: "the pairs.score scale"}


def _interval(row, name: str) -> str:
    value, low, high = row[name], row[f"{name}_low"], row[f"{name}_high"]
    if value != value:  # NaN: no pair to compute it from
        return f"{'-':>23}"
    return f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"


def _head(row) -> str:
    return f"L{int(row['layer'])}.H{int(row['head'])}"


def render(run, labels: dict[str, str]) -> str:
    """The patching section of ``run`` (a :class:`matching_atlas.Run`), or "" for a run without patching_effects.
    Every number is a cell of the reader's :meth:`~matching_atlas.Run.patching_summary` (what the app's Patching
    page shows)."""
    from precompute.analyses.patching_ranking import settings_of
    from precompute.names import SEGMENT_LABELS
    from precompute.statistics import CI_LEVEL

    if not run.has("patching_effects"):
        return ""
    labels = labels or SEGMENT_LABELS
    manifest = run.info.manifest
    info = manifest.patching if manifest is not None else None
    settings = settings_of(info)
    summary = run.patching_summary()
    score = SCALES.get(getattr(info, "score", None), SCALES[None])
    out = ["", f"Activation patching (docs/patching.md): effect = (patched - corrupted) / (clean - corrupted) on "
           f"{score}. Per activation: median effect, ratio of sums sum(patched - corrupted) / sum(clean - corrupted) "
           f"and mean effect over pairs with |clean - corrupted| >= {settings.min_delta:g} (tmean), each with a "
           f"{CI_LEVEL:.0%} bootstrap interval over queries ({settings.n_resamples} resamples, seed {settings.seed}); "
           "no significance test (no Holm family)"]
    for (experiment, method), part in summary.groupby(["experiment", "method"], sort=True):
        out += _experiment(experiment, method, part, summary, labels, info)
    return "\n".join(out) + "\n"


def _experiment(experiment: str, method: str, part, summary, labels, info) -> list[str]:
    heads = part[part.component == "head"].sort_values("rank")
    first = part.iloc[0]
    where = "the pooling position" if experiment == "cls" else "every position"
    verified = method == "exact" and getattr(info, "methods", {}).get(experiment) == "both"
    what = f"exact, the top {len(heads)} heads by attribution" if verified else method
    out = ["", f"{experiment} ({what}): {int(first.n_pairs)} input pairs from {int(first.n_queries)} queries; "
           f"{int(first.n_raised)} where the corruption raised the score; {int(first.n_excluded)} with |clean - "
           f"corrupted| below the min delta (left out of tmean); heads patched at {where}"]
    if len(heads):
        out += [f"  heads by the ratio of sums' lower bound (top {min(TOP_HEADS, len(heads))} of {len(heads)}):",
                f"    {'rank':>4} {'head':<7} {'ratio of sums':>23} {'median':>23} {'tmean':>23} {'mean':>8}"]
        for _, row in heads.head(TOP_HEADS).iterrows():
            out.append(f"    {int(row['rank']):>4} {_head(row):<7} {_interval(row, 'ratio')} {_interval(row, 'median')} "
                       f"{_interval(row, 'tmean')} {row['mean']:>+8.3f}")
        by_mean = heads.sort_values(["mean", "layer", "head"], ascending=[False, True, True]).head(TOP_HEADS)
        out.append("  the top heads by plain mean (the earlier ranking) and their rank now: " + ", ".join(
            f"{_head(r)} (mean {r['mean']:+.3f}) {int(r['rank'])}" for _, r in by_mean.iterrows()))
        out += _agreement(experiment, method, heads, summary)
    out += _components(experiment, part, labels)
    return out


def _agreement(experiment: str, method: str, heads, summary) -> list[str]:
    """Attribution against exact patching on the heads both computed (printed under the exact rows)."""
    if method != "exact":
        return []
    other = summary[(summary.experiment == experiment) & (summary.method == "attribution") &
                    (summary.component == "head")]
    both = heads.merge(other, on=["layer", "head"], suffixes=("", "_attribution"))
    if len(both) < 2:
        return []
    from scipy.stats import spearmanr

    rho = spearmanr(both["ratio"], both["ratio_attribution"]).statistic
    gap = (both["ratio"] - both["ratio_attribution"]).abs().max()
    return [f"  attribution vs exact on these {len(both)} heads: Spearman {rho:.3f} of the ratio of sums, largest "
            f"difference {gap:.3f}"]


def _components(experiment: str, part, labels) -> list[str]:
    segment = "cls" if experiment == "cls" else "all"
    blocks = part[(part.component != "head") & (part.segment == segment)]
    if not len(blocks):
        return []
    layers = sorted(blocks.layer.unique())
    where = labels.get("cls", "CLS") + " position" if segment == "cls" else "all tokens"
    out = [f"  components ({where}), ratio of sums by layer:",
           "    " + f"{'component':<11}" + "".join(f"{'L' + str(int(layer)):>8}" for layer in layers)]
    by = {(r.component, r.layer): r.ratio for r in blocks.itertuples()}
    for component in (*PATCH_COMPONENTS, FINAL_COMPONENT):
        if any((component, layer) in by for layer in layers):
            out.append("    " + f"{component:<11}" + "".join(
                f"{by[(component, layer)]:>+8.3f}" if (component, layer) in by else f"{'':>8}" for layer in layers))
    return out
