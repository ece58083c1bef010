"""``python -m precompute.report RUN``: read a finished run and print its tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from precompute.cli import OneLineParser
from precompute.console import first_line
from precompute.analyses.ranking_effects import DEFAULT_CONTRASTS, parse_contrasts
from precompute.report import compare, head_tables, lexical_tables
from precompute.report import patching_summary
from precompute.report.condition_tables import ReportError, kind_order, render
from precompute.store.connect import connect

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
USAGE = """Print a run's tables in the form of the paper's Table 1: one line per ablation condition (the measure's mean
over queries, delta to the unablated baseline, a mark from the Holm-corrected paired t-test; each analysis -
attention, components, subspace - is its own Holm family), per-layer sweeps and head ablations as grids, component
ablations as a component x layer grid, QK-subspace conditions with their head's own change, then the activation
patching summary and the command that reruns the run. Exit codes: 0 printed, 1 unexpected failure (one line), 2 not a finished run, no ablations,
unknown measure or scope, or a damaged table."""


def _finished(run: Path):
    """The typed manifest of a finished run of a readable schema version; ReportError otherwise."""
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
    return manifest


def _patching_only(run: Path) -> bool:
    """A run with activation patching and no ablations (--ablations none --patching ...): the report prints the
    patching summary alone."""
    run = Path(run)
    return (run / "patching_effects.parquet").exists() and not (run / "ablation_summary.parquet").exists()


def load(run: Path, measure: str, scope: str):
    """(manifest, measure, summary rows as dicts) of a finished run; ReportError otherwise."""
    from precompute.store.schema import SCHEMA_VERSION

    run = Path(run)
    manifest = _finished(run)
    if not (run / "ablation_summary.parquet").exists():
        raise ReportError(f"{run} has no ablations; add them with python -m precompute (same flags) --ablations directions,groups")
    _check_tables(run, current=manifest.schema_version == SCHEMA_VERSION)
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
    cur = con.execute("SELECT * FROM ablation_summary WHERE scope = ? AND measure = ?", [scope, measure])
    cols = [d[0] for d in cur.description]
    rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    return manifest, measure, rows


def _check_tables(run: Path, current: bool) -> None:
    """The two tables the report reads are what the job wrote (page checksums, row counts: a damaged file would
    print numbers of nothing; the columns too when ``current``, a store of this schema version); ReportError naming
    the file otherwise."""
    from precompute.store import integrity
    from precompute.store.schema import TABLES

    for table in ("ablation_summary", "ablation_conditions"):
        try:
            integrity.verify(run / f"{table}.parquet", table, TABLES[table].schema if current else None)
        except integrity.CorruptFile as err:
            raise ReportError(f"{err}; rerun the job with the same command to rebuild it") from err


def rerun_block(manifest, run: Path) -> str:
    """The report's last lines: the command that reruns the run's last job into ``run`` (the app prints the same)."""
    from precompute.config import rerun_command

    return f"\nRerun (resumes the run; computes only what it lacks):\n  {rerun_command(manifest.job_settings(), run)}\n"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m precompute.report", description=USAGE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="run folder written by python -m precompute (--out)")
    p.add_argument("--measure", default="nDCG@10", help="ir_measures name stored for the run. Default: %(default)s")
    p.add_argument("--scope", default="pairs", help="pairs, judged or run (as stored). Default: %(default)s")
    p.add_argument("--kind", default=",".join(kind_order()), help=f"comma-separated: {', '.join(kind_order())}. "
                   "Default: all present")
    p.add_argument("--mode", help="only conditions of this mode (zero or mask); default both")
    p.add_argument("--contrasts", default=DEFAULT_CONTRASTS, metavar="A:B,...",
                   help="pairs of conditions compared directly, query by query (paired t-test of the measure, "
                   "bootstrap intervals of the ranking statistics): condition names over all layers or condition ids. "
                   "Default: %(default)s (titled Q->D vs D->Q)")
    p.add_argument("--sort", choices=("name", "delta"), default="name", help="row order of the direction and group "
                   "tables. Default: %(default)s")
    c = p.add_argument_group("comparing two runs", "Instead of RUN's tables: RUN and OTHER's per-layer profiles of one "
                             "summary metric, aligned by relative depth or by layer index.")
    c.add_argument("--compare", type=Path, metavar="OTHER", help="a second run folder")
    c.add_argument("--metric", default="q_d", help="head_attention metric compared. Default: %(default)s")
    c.add_argument("--align", choices=("depth", "layer"), default="depth",
                   help="depth: the deeper model's layers binned into the shallower one's by relative depth; layer: by "
                   "layer index. Default: %(default)s")
    c.add_argument("--neg-type", help="only pairs of this negative type (relevant, hard, easy). Default: every pair")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kinds = [k.strip() for k in args.kind.split(",") if k.strip()]
    bad = [k for k in kinds if k not in kind_order()]
    try:
        if bad:
            raise ReportError(f"--kind {bad[0]!r}: expected any of {', '.join(kind_order())}")
        if args.compare is not None:
            for run in (args.run, args.compare):
                _finished(run)
            try:
                sys.stdout.write(compare.render(args.run, args.compare, args.metric, args.align, args.neg_type))
            except ValueError as err:
                raise ReportError(str(err)) from err
            return EXIT_OK
        if _patching_only(args.run):
            manifest = _finished(args.run)
            sys.stdout.write(f"{args.run}: no ablations; activation patching only\n")
        else:
            manifest, measure, rows = load(args.run, args.measure, args.scope)
            modes = [args.mode] if args.mode else None
            try:
                contrasts = parse_contrasts(args.contrasts)
            except ValueError as err:
                raise ReportError(str(err)) from err
            sys.stdout.write(render(manifest, args.run, measure, args.scope, rows, kinds, modes, args.sort, contrasts))
            con = connect(args.run)
            seed = manifest.identity.seed or 0
            lines = head_tables.render(con) + head_tables.alignment_lines(con, seed) + lexical_tables.render(con, seed)
            sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.write(patching_summary.render(args.run, manifest.model.segment_labels, manifest))
        sys.stdout.write(rerun_block(manifest, args.run))
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # anything else (a bug, a store DuckDB cannot read): one line, never a traceback
        print(f"error: unexpected {type(err).__name__}: {first_line(err)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


