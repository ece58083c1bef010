"""The report's condition tables, in the form of the paper's Table 1: one line per condition (its measure's mean over
queries, delta to the unablated baseline, a significance mark from the Holm-corrected paired t-test), per-layer
sweeps as condition x layer grids, head ablations as layer x head grids, component ablations as a component x layer
grid, QK-subspace interventions with what they did to their head's own attention (view ``subspace_effects``).

One section per registered condition kind (:mod:`precompute.conditions.kinds`: its title, in registry order); a kind
without a layout of its own here is printed as a Table-1 list of its conditions. Rows are ``ablation_summary`` rows:
every part of a condition is a column, nothing is parsed from an id.
"""

from __future__ import annotations

from pathlib import Path

from precompute.statistics import fmt_p as _fmt_p
from precompute.statistics import stars as mark
SCOPE_TEXT = {
    "pairs": "every pair of the run ranked per query; easy negatives count as non-relevant",
    "judged": "judged pairs only",
    "run": "the candidate run's pairs, re-ranked",
}


class ReportError(Exception):
    """Why a folder cannot be reported (one line)."""


def kind_order() -> tuple[str, ...]:
    """The kinds the report prints (every registered kind but the baseline), in registry order."""
    from precompute.conditions import REGISTRY

    return tuple(name for name, kind in REGISTRY.items() if kind.analysis is not None)


def _label(row: dict) -> str:
    from precompute.conditions import GROUPS, short_label

    name = row["condition"]
    if row["kind"] == "group":
        return f"{GROUPS[name][1]} ({name})" if name in GROUPS else name
    return short_label(name)


def _sort_key(row: dict):
    from precompute.conditions import GROUPS
    from precompute.names import DIRECTIONS

    name = row["condition"]
    order = DIRECTIONS.index(name) if name in DIRECTIONS else len(DIRECTIONS) + (list(GROUPS).index(name) if name in GROUPS else len(GROUPS))
    return (row["mode"], row["layers"] != "all", row["layers"], order, name)


def render(manifest, root: Path | str, measure: str, scope: str, rows: list[dict], kinds: list[str],
           modes: list[str] | None, sort: str = "name", contrasts: list[tuple[str, str]] | None = None) -> str:
    """The report of ``rows`` (ablation_summary rows of one scope and measure) for a run's typed ``manifest``, with the
    query-level Table 1 and the direct comparisons ``contrasts`` (report.ranking_tables) after the direction and
    group tables."""
    from precompute.statistics import FEW_QUERIES_WARNING, MIN_QUERIES
    from precompute.conditions import analyses, kind_of
    from precompute.names import NEG_TYPES
    from precompute.store.manifest import AblationsInfo

    base = next((r for r in rows if r["kind"] == "baseline"), None)
    if base is None:
        raise ReportError("ablation_summary has no baseline row ('none'); rerun the job")
    families = _families(rows)
    rows = [r for r in rows if r["kind"] != "baseline" and (not modes or r["mode"] in modes)]
    m, c, d = manifest.model, manifest.counts, manifest.dataset
    ab = manifest.ablations or AblationsInfo()
    counts = c.neg_type
    neg = ", ".join(f"{k} {counts[k]:,}" for k in sorted(counts, key=lambda k: (NEG_TYPES.index(k) if k in NEG_TYPES else 99, k)) if counts[k])
    lead = next((a for a in analyses() if a.name in families), None)  # the family the Test line counts
    out = [
        f"Run       {root}",
        f"Model     {m.name} ({m.architecture}, {m.layers} layers x {m.heads} heads, score {m.score})",
        f"Dataset   {d.name}: {c.queries} queries, {c.pairs or 0:,} pairs ({neg})",
        f"Scope     {scope}: {SCOPE_TEXT.get(scope, scope)}",
        f"Baseline  {measure} = {base['mean']:.4f} over {base['n_queries']} queries, no ablation "
        f"(ablation kernel {ab.kernel or '?'}; device {manifest.parameters.get('device', '?')})",
        "Test      paired two-sided t-test over queries vs the baseline, Holm-corrected "
        + (f"across the run's {families[lead.name]} tested {lead.members} (each analysis is its own Holm family)"
           if len(families) > 1 else f"across the run's {sum(families.values())} tested conditions")
        + "; * p<0.05  ** p<0.01  *** p<0.001 (corrected)",
    ]
    if base["n_queries"] < MIN_QUERIES:
        out.append(f"Warning   {FEW_QUERIES_WARNING}")
    present = [k for k in kind_order() if k in kinds and any(r["kind"] == k for r in rows)]
    if not present:
        out += ["", f"(no conditions of kind {', '.join(kinds)} in this run)"]
    for kind in present:
        sel = [r for r in rows if r["kind"] == kind]
        spec = kind_of(kind)
        out += ["", f"{spec.title} ({len(sel)})"]
        if len(families) > 1 and spec.analysis is not lead:
            out.append(f"(their own Holm family: the run's {families.get(spec.analysis.name, 0)} tested "
                       f"{spec.analysis.members})")
        if kind in ("direction", "group"):
            out += _list_table(sel, measure, sort)
        elif kind == "layer_sweep":
            single = [r for r in rows if r["kind"] in ("direction", "group", "layer_sweep") and r["layer"] is not None]
            out += _sweep_grid(sel, single)
        elif kind == "head":
            out += _head_grid(sel)
        elif kind == "component":
            out += _component_tables(sel, measure, m.segment_labels)
        elif kind == "subspace":
            out += _subspace_table(sel, _run(root), measure, scope)
        else:
            out += _id_table(sel, measure)
    if contrasts is not None and any(k in ("direction", "group") for k in present):
        from precompute.report import ranking_tables

        out += ranking_tables.render(_run(root), rows, measure, scope, contrasts, manifest.identity.seed or 0,
                                     _label)
    if ab.refused:
        out += ["", f"Refused before the run ({len(ab.refused)}): they remove only directions a causal model cannot "
                "attend (into a later segment), so they would change nothing; not in any Holm family", "  " +
                ", ".join(ab.refused)]
    return "\n".join(out) + "\n"


def _families(rows: list[dict]) -> dict[str, int]:
    """analysis -> its tested conditions (p_holm not NULL) among ``rows`` (one scope and measure), for every analysis
    with a condition in them."""
    out: dict[str, int] = {}
    for r in rows:
        if r["analysis"] is not None:
            out[r["analysis"]] = out.get(r["analysis"], 0) + (r["p_holm"] is not None)
    return out


def _list_table(rows: list[dict], measure: str, sort: str) -> list[str]:
    rows = sorted(rows, key=(lambda r: (r["delta"], _sort_key(r))) if sort == "delta" else _sort_key)
    width = max(len("condition"), *(len(_label(r)) for r in rows))
    head = f"{'condition':<{width}}  {'layers':<6}  {'mode':<4}  {measure:>8}  {'delta':>8}  {'sig':<3}  {'p':>7}  {'p_holm':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{_label(r):<{width}}  {r['layers']:<6}  {r['mode']:<4}  {r['mean']:>8.4f}  {r['delta']:>+8.4f}  "
            f"{mark(r['p_holm'], n_queries=r['n_queries']):<3}  {_fmt_p(r['p']):>7}  {_fmt_p(r['p_holm']):>7}"
        )
    return lines


def _cell(r: dict | None) -> str:
    if r is None:
        return ""
    return f"{r['delta']:+.3f}{mark(r['p_holm'], n_queries=r['n_queries'])}"


def _target_label(mode: str, name: str) -> str:
    from precompute.names import DIRECTIONS

    return f"{_label({'condition': name, 'kind': 'direction' if name in DIRECTIONS else 'group'})} /{mode}"


def _sweep_grid(rows: list[dict], single_layer: list[dict]) -> list[str]:
    """One line per swept (mode, condition), one column per layer. Cells come from any single-layer condition of
    that name (a layer given with --ablation-layers keeps its 'direction'/'group' kind but is the same condition)."""
    targets = sorted({(r["mode"], r["condition"]) for r in rows},
                     key=lambda mc: _sort_key({"mode": mc[0], "layers": "x", "condition": mc[1]}))
    by = {(r["mode"], r["condition"], r["layer"]): r for r in single_layer}
    layers = sorted({r["layer"] for r in single_layer if (r["mode"], r["condition"]) in set(targets)})
    labels = {t: _target_label(*t) for t in targets}
    width = max(len("condition / layer"), *(len(v) for v in labels.values()))
    lines = [f"{'condition / layer':<{width}}" + "".join(f"{'L' + str(l):>11}" for l in layers)]
    for t in targets:
        lines.append(f"{labels[t]:<{width}}" + "".join(f"{_cell(by.get((*t, l))):>11}" for l in layers))
    return lines


def _component_label(row: dict, labels: dict[str, str]) -> str:
    """'MLP @ Document' (the family's segment words), 'attention (all tokens)'."""
    name = {"mlp": "MLP", "attn": "attention"}[row["component"]]
    segment = row["segment"]
    return f"{name} @ {labels.get(segment, segment)}" if segment else f"{name} (all tokens)"


def _component_order(row: dict) -> tuple:
    return row["component"], row["segment"] or ""


def _id_table(rows: list[dict], measure: str) -> list[str]:
    """One line per condition, by id (Table 1 form): a kind without a layout of its own."""
    width = max(len("condition"), *(len(r["condition_id"]) for r in rows))
    head = f"{'condition':<{width}}  {measure:>8}  {'delta':>8}  {'sig':<3}  {'p':>7}  {'p_holm':>7}"
    return [head, "-" * len(head)] + [
        f"{r['condition_id']:<{width}}  {r['mean']:>8.4f}  {r['delta']:>+8.4f}  {mark(r['p_holm'], n_queries=r['n_queries']):<3}  "
        f"{_fmt_p(r['p']):>7}  {_fmt_p(r['p_holm']):>7}" for r in sorted(rows, key=lambda r: r["condition_id"])]


def _component_tables(rows: list[dict], measure: str, labels: dict[str, str]) -> list[str]:
    """One line per condition (Table 1 form), then the component x layer grid of single-layer conditions."""
    from precompute.names import SEGMENT_LABELS

    labels = labels or SEGMENT_LABELS
    width = max(len("condition"), *(len(r["condition_id"]) for r in rows))
    head = f"{'condition':<{width}}  {'what':<28}  {measure:>8}  {'delta':>8}  {'sig':<3}  {'p':>7}  {'p_holm':>7}"
    lines = [head, "-" * len(head)]
    order = lambda r: (r["mode"], r["layer"] if r["layer"] is not None else -1, _component_order(r))  # noqa: E731
    for r in sorted(rows, key=order):
        lines.append(f"{r['condition_id']:<{width}}  {_component_label(r, labels):<28}  {r['mean']:>8.4f}  "
                     f"{r['delta']:>+8.4f}  {mark(r['p_holm'], n_queries=r['n_queries']):<3}  {_fmt_p(r['p']):>7}  {_fmt_p(r['p_holm']):>7}")
    single = [r for r in rows if r["layer"] is not None]
    if single:
        layers = sorted({r["layer"] for r in single})
        targets = sorted({(r["mode"], *_component_order(r)) for r in single})
        by = {(r["mode"], *_component_order(r), r["layer"]): r for r in single}
        names = {t: f"{_component_label({'component': t[1], 'segment': t[2] or None}, labels)} /{t[0]}" for t in targets}
        width = max(len("component / layer"), *(len(n) for n in names.values()))
        lines += ["", f"{'component / layer':<{width}}" + "".join(f"{'L' + str(l):>11}" for l in layers)]
        lines += [f"{names[t]:<{width}}" + "".join(f"{_cell(by.get((*t, l))):>11}" for l in layers) for t in targets]
    return lines


def _run(root: Path | str):
    """The run at ``root`` through the reader (its verification is cached per file state, so a second call costs a
    listing): the tables the report shares with the app come from its methods."""
    import matching_atlas as ma

    return ma.open_run(Path(root), progress=False)


def _subspace_table(rows: list[dict], run, measure: str, scope: str) -> list[str]:
    """One line per condition: the measure's change, and the change of its own head's attention
    (:meth:`matching_atlas.Run.subspace_effects`, what the Ablations page shows)."""
    import math

    from matching_atlas.ablations import SUBSPACE_NAMED as shown

    effects = run.subspace_effects(measure, scope).set_index("condition_id")
    head = (f"{'condition':<22}  {measure:>8}  {'delta':>8}  {'sig':<3}  " + "  ".join(f"{'d ' + m:>11}" for m in shown)
            + f"  {'max |d| other':>13}")
    lines = [head, "-" * len(head), "(d <metric>: the head's own mean over the run's pairs, with minus without)"]
    for r in sorted(rows, key=lambda r: (r["layer"], r["head"], r["k"], r["mode"])):
        e = effects.loc[r["condition_id"]] if r["condition_id"] in effects.index else None
        deltas = [math.nan if e is None else float(e[f"delta_{m}"]) for m in shown]
        cells = "  ".join(f"{v:>+11.4f}" if v == v else f"{'n/a':>11}" for v in deltas)
        other = math.nan if e is None else abs(float(e["other_delta"]))
        lines.append(f"{r['condition_id']:<22}  {r['mean']:>8.4f}  {r['delta']:>+8.4f}  {mark(r['p_holm'], n_queries=r['n_queries']):<3}  {cells}  "
                     f"{other:>13.4f}")
    return lines


def _head_grid(rows: list[dict]) -> list[str]:
    layers = sorted({r["layer"] for r in rows})
    heads = sorted({r["head"] for r in rows})
    by = {(r["layer"], r["head"]): r for r in rows}
    lines = ["layer" + "".join(f"{'H' + str(h):>10}" for h in heads)]
    for l in layers:
        lines.append(f"L{l:<4}" + "".join(f"{_cell(by.get((l, h))):>10}" for h in heads))
    return lines


