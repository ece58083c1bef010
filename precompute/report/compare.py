"""``python -m precompute.report RUN --compare OTHER``: two runs' per-layer profiles of one summary metric side by
side, aligned by relative depth (a 6-layer MiniLM and a 24-layer MonoBERT-large only compare that way) or by layer
index. A layer's value is the mean over its heads of the metric's mean over the run's pairs (from
``head_attention_agg``, every pair, or one negative type); the deeper model's layers are binned into the shallower
model's (:mod:`precompute.depth`), a bin's value is the mean of its layers'."""

from __future__ import annotations

from pathlib import Path

from precompute.depth import depth_bin


def layer_means(run: Path, metric: str, neg_type: str | None) -> dict[int, float | None]:
    """layer -> mean over heads of the metric's mean over pairs (None: NULL, a direction a causal model lacks)."""
    from precompute.store.connect import connect

    where = "" if neg_type is None else "WHERE neg_type = ?"
    rows = connect(run).execute(
        f'SELECT layer, avg(s / n) FROM (SELECT layer, head, sum("{metric}_sum") AS s, sum(n) AS n '
        f"FROM head_attention_agg {where} GROUP BY layer, head) GROUP BY layer ORDER BY layer",
        [] if neg_type is None else [neg_type]).fetchall()
    return {int(layer): value for layer, value in rows}


def render(run_a: Path, run_b: Path, metric: str, align: str, neg_type: str | None) -> str:
    from precompute.metrics import METRICS, metric_label

    if metric not in METRICS:
        raise ValueError(f"--metric {metric!r}: expected a head_attention metric such as q_d or q2d_max")
    a, b = layer_means(run_a, metric, neg_type), layer_means(run_b, metric, neg_type)
    la, lb = len(a), len(b)
    which = "every pair" if neg_type is None else f"{neg_type} pairs"
    out = [f"Compare   A {run_a} ({la} layers) vs B {run_b} ({lb} layers)",
           f"Metric    {metric}: {metric_label(metric)}; layer value = mean over heads of the mean over {which}"]
    fmt = lambda v: f"{v:>9.4f}" if v is not None else f"{'NULL':>9}"  # noqa: E731
    if align == "layer":
        out += ["Aligned   by layer index (layers only one run has are left blank)", "",
                f"{'layer':<7}{'A':>9}{'B':>9}{'B - A':>9}"]
        for layer in range(max(la, lb)):
            va, vb = a.get(layer), b.get(layer)
            diff = fmt(vb - va) if va is not None and vb is not None else f"{'':>9}"
            out.append(f"{layer:<7}{fmt(va) if layer < la else '':>9}{fmt(vb) if layer < lb else '':>9}{diff}")
        return "\n".join(out) + "\n"
    bins = min(la, lb)
    out += [f"Aligned   by relative depth: {bins} bins (layer l of L sits at (l + 0.5) / L)", "",
            f"{'bin':<5}{'A layers':>10}{'B layers':>10}{'A':>9}{'B':>9}{'B - A':>9}"]

    def binned(values: dict[int, float | None], n: int, k: int) -> tuple[str, float | None]:
        members = [l for l in range(n) if depth_bin(l, n, bins) == k]
        kept = [values[l] for l in members if values.get(l) is not None]
        span = f"{members[0]}-{members[-1]}" if len(members) > 1 else str(members[0])
        return span, (sum(kept) / len(kept) if kept else None)

    for k in range(bins):
        (sa, va), (sb, vb) = binned(a, la, k), binned(b, lb, k)
        diff = fmt(vb - va) if va is not None and vb is not None else f"{'NULL':>9}"
        out.append(f"{k:<5}{sa:>10}{sb:>10}{fmt(va)}{fmt(vb)}{diff}")
    return "\n".join(out) + "\n"
