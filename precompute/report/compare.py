"""``python -m precompute.report RUN --compare OTHER``: two runs' per-layer profiles of one summary metric side by
side, aligned by relative depth (a 6-layer MiniLM and a 24-layer MonoBERT-large only compare that way) or by layer
index. The table is the reader's :meth:`matching_atlas.Run.compare` (the app's Compare runs page computes its own
from the same functions of :mod:`matching_atlas.depth`); this module only prints it."""

from __future__ import annotations


def render(run_a, run_b, metric: str, align: str, neg_type: str | None) -> str:
    """The comparison of two :class:`matching_atlas.Run` as text."""
    from precompute.metrics import METRICS, metric_label

    if metric not in METRICS:
        raise ValueError(f"--metric {metric!r}: expected a head_attention metric such as q_d or q2d_max")
    table = run_a.compare(run_b, metric=metric, align=align, neg_type=neg_type)
    la, lb = run_a.layers, run_b.layers
    which = "every pair" if neg_type is None else f"{neg_type} pairs"
    out = [f"Compare   A {run_a.path} ({la} layers) vs B {run_b.path} ({lb} layers)",
           f"Metric    {metric}: {metric_label(metric)}; layer value = mean over heads of the mean over {which}"]
    fmt = lambda v: f"{v:>9.4f}" if v == v else f"{'NULL':>9}"  # noqa: E731 - NaN: a NULL metric
    if align == "layer":
        out += ["Aligned   by layer index (layers only one run has are left blank)", "",
                f"{'layer':<7}{'A':>9}{'B':>9}{'B - A':>9}"]
        for r in table.itertuples():
            a, b = fmt(r.value_a) if r.layer < la else "", fmt(r.value_b) if r.layer < lb else ""
            diff = fmt(r.diff) if r.diff == r.diff else f"{'':>9}"
            out.append(f"{r.layer:<7}{a:>9}{b:>9}{diff}")
        return "\n".join(out) + "\n"
    out += [f"Aligned   by relative depth: {len(table)} bins (layer l of L sits at (l + 0.5) / L)", "",
            f"{'bin':<5}{'A layers':>10}{'B layers':>10}{'A':>9}{'B':>9}{'B - A':>9}"]
    for r in table.itertuples():
        out.append(f"{r.bin:<5}{r.layers_a:>10}{r.layers_b:>10}{fmt(r.value_a)}{fmt(r.value_b)}{fmt(r.diff)}")
    return "\n".join(out) + "\n"
