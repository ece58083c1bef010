"""The report's activation-patching summary: per experiment, the heads whose clean output recovers most of the score
difference (mean effect over the input pairs with its 95% confidence interval) and the components by layer.

Patching effects are not tested for significance (no Holm family): the intervals say how precisely each mean is
known over the experiment's input pairs.
"""

from __future__ import annotations

TOP_HEADS = 10


def render(run, labels: dict[str, str]) -> str:
    """The patching section of ``run`` (a :class:`matching_atlas.Run`), or "" for a run without patching_effects.
    Every number is a cell of the reader's :meth:`~matching_atlas.Run.patching_experiments`,
    :meth:`~matching_atlas.Run.patching_heads` or :meth:`~matching_atlas.Run.patching_components` (what the app's
    Patching page shows)."""
    from precompute.names import SEGMENT_LABELS

    if not run.has("patching_effects"):
        return ""
    labels = labels or SEGMENT_LABELS
    out = ["", "Activation patching: effect = (patched - corrupted) / (clean - corrupted), mean over input pairs "
           "[95% CI = mean +- 1.96 sd / sqrt(n)]; no significance test (no Holm family)"]
    for exp in run.patching_experiments().itertuples():
        experiment = exp.experiment
        where = "the pooling position" if experiment == "cls" else "every position"
        out += ["", f"{experiment}: {exp.patch_pairs} input pairs ({exp.null_pairs} with |clean - corrupted| below "
                f"epsilon: effect NULL, left out); heads patched at {where}", f"  top {TOP_HEADS} heads by mean effect:"]
        heads = run.patching_heads(experiment).dropna(subset=["mean"])
        heads = heads.sort_values(["mean", "layer", "head"], ascending=[False, True, True]).head(TOP_HEADS)
        out += [f"    L{h.layer}.H{h.head:<3} {h.mean:+.3f}  [{_or(h.ci_lo, h.mean):+.3f}, {_or(h.ci_hi, h.mean):+.3f}]"
                f"  n={h.n}" for h in heads.itertuples()]
        segment = "cls" if experiment == "cls" else "all"
        comps = run.patching_components(experiment)
        comps = comps[(comps["segment"] == segment) & comps["mean"].notna()]
        layers = sorted(set(comps["layer"]))
        where = labels.get("cls", "CLS") + " position" if segment == "cls" else "all tokens"
        out.append(f"  components ({where}), mean effect by layer:")
        out.append("    " + f"{'component':<10}" + "".join(f"{'L' + str(l):>8}" for l in layers))
        by = {(c.component, c.layer): c.mean for c in comps.itertuples()}
        for component in ("resid", "attn", "mlp"):
            out.append("    " + f"{component:<10}" + "".join(
                f"{by[(component, l)]:>+8.3f}" if (component, l) in by else f"{'':>8}" for l in layers))
    return "\n".join(out) + "\n"


def _or(value: float, default: float) -> float:
    """``value``, or ``default`` where it is NaN (a mean over one pair has no interval)."""
    return default if value != value else value
