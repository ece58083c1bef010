"""The report's activation-patching summary: per experiment, the heads whose clean output recovers most of the score
difference (mean effect over the input pairs with its 95% confidence interval) and the components by layer.

Patching effects are not tested for significance (no Holm family): the intervals say how precisely each mean is
known over the experiment's input pairs.
"""

from __future__ import annotations

from pathlib import Path

TOP_HEADS = 10


def render(root: Path | str, labels: dict[str, str]) -> str:
    """The patching section, or "" for a run without patching_effects."""
    from precompute.names import SEGMENT_LABELS
    from precompute.store.connect import connect

    root = Path(root)
    if not (root / "patching_effects.parquet").exists():
        return ""
    labels = labels or SEGMENT_LABELS
    con = connect(root)
    out = ["", "Activation patching: effect = (patched - corrupted) / (clean - corrupted), mean over input pairs "
           "[95% CI = mean +- 1.96 sd / sqrt(n)]; no significance test (no Holm family)"]
    for (experiment,) in con.execute("SELECT DISTINCT experiment FROM patching_effects ORDER BY 1").fetchall():
        n_pairs, n_null = con.execute(
            "SELECT count(DISTINCT patch_id), count(DISTINCT CASE WHEN effect IS NULL THEN patch_id END) "
            "FROM patching_effects WHERE experiment = ?", [experiment]).fetchone()
        where = "the pooling position" if experiment == "cls" else "every position"
        out += ["", f"{experiment}: {n_pairs} input pairs ({n_null} with |clean - corrupted| below epsilon: effect "
                f"NULL, left out); heads patched at {where}", f"  top {TOP_HEADS} heads by mean effect:"]
        heads = con.execute(
            "SELECT layer, head, avg(effect) AS m, stddev_samp(effect) / sqrt(count(effect)) AS se, count(effect) "
            "FROM patching_effects WHERE experiment = ? AND component = 'head' AND effect IS NOT NULL "
            "GROUP BY layer, head ORDER BY m DESC, layer, head LIMIT ?", [experiment, TOP_HEADS]).fetchall()
        out += [f"    L{layer}.H{head:<3} {m:+.3f}  [{m - 1.96 * (se or 0):+.3f}, {m + 1.96 * (se or 0):+.3f}]  n={n}"
                for layer, head, m, se, n in heads]
        segment = "cls" if experiment == "cls" else "all"
        rows = con.execute(
            "SELECT component, layer, avg(effect) FROM patching_effects WHERE experiment = ? AND segment = ? AND "
            "component <> 'head' AND effect IS NOT NULL GROUP BY ALL ORDER BY component, layer",
            [experiment, segment]).fetchall()
        layers = sorted({r[1] for r in rows})
        where = labels.get("cls", "CLS") + " position" if segment == "cls" else "all tokens"
        out.append(f"  components ({where}), mean effect by layer:")
        out.append("    " + f"{'component':<10}" + "".join(f"{'L' + str(l):>8}" for l in layers))
        by = {(c, l): v for c, l, v in rows}
        for component in ("resid", "attn", "mlp"):
            out.append("    " + f"{component:<10}" + "".join(
                f"{by[(component, l)]:>+8.3f}" if (component, l) in by else f"{'':>8}" for l in layers))
    return "\n".join(out) + "\n"
