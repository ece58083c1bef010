"""Print a run's ablation tables for a terminal, in the form of the paper's Table 1.

    python -m precompute.report RUN [--measure nDCG@10] [--scope pairs] [--kind direction,group] [--mode zero]

One line per condition: condition, the measure's mean over queries, delta to the unablated baseline and a
significance mark from the Holm-corrected paired t-test (``ablation_summary``). Per-layer sweeps print as a
condition x layer grid of deltas, head ablations as a layer x head grid. Reads the store with DuckDB only.
Exit codes: 0 printed, 1 unexpected failure (one line), 2 not a finished run / no ablations / unknown measure or
scope / a damaged table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
KIND_ORDER = ("direction", "group", "layer_sweep", "head")
KIND_TITLES = {
    "direction": "Directions",
    "group": "Groups",
    "layer_sweep": "Per-layer sweeps (delta per layer)",
    "head": "Heads (delta per head; row = layer)",
}
SCOPE_TEXT = {
    "pairs": "every pair of the run ranked per query; easy negatives count as non-relevant",
    "judged": "judged pairs only",
    "run": "the candidate run's pairs, re-ranked",
}
MARKS = ((0.001, "***"), (0.01, "**"), (0.05, "*"))


class ReportError(Exception):
    """Why a folder cannot be reported (one line)."""


def mark(p_holm: float | None) -> str:
    if p_holm is None:
        return ""
    for level, sym in MARKS:
        if p_holm < level:
            return sym
    return ""


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def load(run: Path, measure: str, scope: str):
    """(manifest, measure, summary rows as dicts) of a finished run; ReportError otherwise."""
    from precompute.store.manifest import STATUS_COMPLETE, ManifestError, read_manifest
    from precompute.store.schema import READABLE_SCHEMA_VERSIONS

    run = Path(run)
    try:
        manifest = read_manifest(run) if run.is_dir() else None
    except ManifestError as err:
        raise ReportError(str(err)) from err
    if manifest is None:
        raise ReportError(f"{run} is not a run folder (no manifest.json); pass the folder the job wrote (--out)")
    if manifest.schema_version not in READABLE_SCHEMA_VERSIONS:
        raise ReportError(f"{run} holds a store of schema version {manifest.schema_version}; this report reads "
                          f"versions {', '.join(map(str, READABLE_SCHEMA_VERSIONS))} (rerun the job into a new folder)")
    if manifest.status != STATUS_COMPLETE:
        raise ReportError(f"{run} is not a finished run (status {manifest.status!r}); rerun the job to finish it")
    if not (run / "ablation_summary.parquet").exists():
        raise ReportError(f"{run} has no ablations; add them with python -m precompute (same flags) --ablations directions,groups")
    _check_tables(run)
    from precompute.store.connect import connect

    con = connect(run)
    available = con.execute("SELECT DISTINCT scope, measure FROM ablation_summary ORDER BY ALL").fetchall()
    scopes = sorted({s for s, _ in available})
    if scope not in scopes:
        raise ReportError(f"scope {scope!r} is not in this run; it has {', '.join(scopes)}")
    measures = {m.lower(): m for s, m in available if s == scope}
    if measure.lower() not in measures:
        raise ReportError(f"measure {measure!r} is not in this run; it has {', '.join(measures.values())} "
                          "(add one with python -m precompute ... --measures)")
    measure = measures[measure.lower()]
    cur = con.execute(
        "SELECT s.*, c.directions FROM ablation_summary s JOIN ablation_conditions c USING (condition_id) "
        "WHERE scope = ? AND measure = ?", [scope, measure],
    )
    cols = [d[0] for d in cur.description]
    rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    return manifest, measure, rows


def _check_tables(run: Path) -> None:
    """The two tables the report reads are what the job wrote (page checksums, row counts: a damaged file would
    print numbers of nothing); ReportError naming the file otherwise."""
    from precompute.store import integrity
    from precompute.store.schema import TABLES

    for table in ("ablation_summary", "ablation_conditions"):
        try:
            integrity.verify(run / f"{table}.parquet", table, TABLES[table].schema)
        except integrity.CorruptFile as err:
            raise ReportError(f"{err}; rerun the job with the same command to rebuild it") from err


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
           modes: list[str] | None, sort: str = "name") -> str:
    """The report of ``rows`` (ablation_summary joined with the directions) for a run's typed ``manifest``."""
    from precompute.names import NEG_TYPES
    from precompute.store.manifest import AblationsInfo

    base = next((r for r in rows if r["kind"] == "baseline"), None)
    if base is None:
        raise ReportError("ablation_summary has no baseline row ('none'); rerun the job")
    rows = [r for r in rows if r["kind"] != "baseline" and (not modes or r["mode"] in modes)]
    family = sum(r["p_holm"] is not None for r in rows) if not modes else None
    m, c, d = manifest.model, manifest.counts, manifest.dataset
    ab = manifest.ablations or AblationsInfo()
    counts = c.neg_type
    neg = ", ".join(f"{k} {counts[k]:,}" for k in sorted(counts, key=lambda k: (NEG_TYPES.index(k) if k in NEG_TYPES else 99, k)) if counts[k])
    out = [
        f"Run       {root}",
        f"Model     {m.name} ({m.architecture}, {m.layers} layers x {m.heads} heads, score {m.score})",
        f"Dataset   {d.name}: {c.queries} queries, {c.pairs or 0:,} pairs ({neg})",
        f"Scope     {scope}: {SCOPE_TEXT.get(scope, scope)}",
        f"Baseline  {measure} = {base['mean']:.4f} over {base['n_queries']} queries, no ablation "
        f"(ablation kernel {ab.kernel or '?'}; device {manifest.parameters.get('device', '?')})",
        "Test      paired two-sided t-test over queries vs the baseline, Holm-corrected across the run's "
        f"{ab.holm_family if ab.holm_family is not None else family} tested conditions; * p<0.05  ** p<0.01  *** p<0.001 (corrected)",
    ]
    present = [k for k in KIND_ORDER if k in kinds and any(r["kind"] == k for r in rows)]
    if not present:
        out += ["", f"(no conditions of kind {', '.join(kinds)} in this run)"]
    for kind in present:
        sel = [r for r in rows if r["kind"] == kind]
        out += ["", f"{KIND_TITLES[kind]} ({len(sel)})"]
        if kind in ("direction", "group"):
            out += _list_table(sel, measure, sort)
        elif kind == "layer_sweep":
            single = [r for r in rows if r["kind"] in ("direction", "group", "layer_sweep") and r["layer"] is not None]
            out += _sweep_grid(sel, single)
        else:
            out += _head_grid(sel)
    return "\n".join(out) + "\n"


def _list_table(rows: list[dict], measure: str, sort: str) -> list[str]:
    rows = sorted(rows, key=(lambda r: (r["delta"], _sort_key(r))) if sort == "delta" else _sort_key)
    width = max(len("condition"), *(len(_label(r)) for r in rows))
    head = f"{'condition':<{width}}  {'layers':<6}  {'mode':<4}  {measure:>8}  {'delta':>8}  {'sig':<3}  {'p':>7}  {'p_holm':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{_label(r):<{width}}  {r['layers']:<6}  {r['mode']:<4}  {r['mean']:>8.4f}  {r['delta']:>+8.4f}  "
            f"{mark(r['p_holm']):<3}  {_fmt_p(r['p']):>7}  {_fmt_p(r['p_holm']):>7}"
        )
    return lines


def _cell(r: dict | None) -> str:
    if r is None:
        return ""
    return f"{r['delta']:+.3f}{mark(r['p_holm'])}"


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


def _head_grid(rows: list[dict]) -> list[str]:
    layers = sorted({r["layer"] for r in rows})
    heads = sorted({r["head"] for r in rows})
    by = {(r["layer"], r["head"]): r for r in rows}
    lines = ["layer" + "".join(f"{'H' + str(h):>10}" for h in heads)]
    for l in layers:
        lines.append(f"L{l:<4}" + "".join(f"{_cell(by.get((l, h))):>10}" for h in heads))
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m precompute.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="run folder written by python -m precompute (--out)")
    p.add_argument("--measure", default="nDCG@10", help="ir_measures name stored for the run. Default: %(default)s")
    p.add_argument("--scope", default="pairs", help="pairs, judged or run (as stored). Default: %(default)s")
    p.add_argument("--kind", default=",".join(KIND_ORDER), help="comma-separated: direction, group, layer_sweep, head. "
                   "Default: all present")
    p.add_argument("--mode", help="only conditions of this mode (zero or mask); default both")
    p.add_argument("--sort", choices=("name", "delta"), default="name", help="row order of the direction and group "
                   "tables. Default: %(default)s")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kinds = [k.strip() for k in args.kind.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KIND_ORDER]
    try:
        if bad:
            raise ReportError(f"--kind {bad[0]!r}: expected any of {', '.join(KIND_ORDER)}")
        manifest, measure, rows = load(args.run, args.measure, args.scope)
        modes = [args.mode] if args.mode else None
        sys.stdout.write(render(manifest, args.run, measure, args.scope, rows, kinds, modes, args.sort))
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # anything else (a bug, a store DuckDB cannot read): one line, never a traceback
        text = str(err).strip().splitlines()[0] if str(err).strip() else "no message"
        print(f"error: unexpected {type(err).__name__}: {text}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
