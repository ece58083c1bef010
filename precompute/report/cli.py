"""``python -m precompute.report RUN``: print a run's tables, each read through the reader (:mod:`matching_atlas`:
the same DataFrames the app's pages show)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from precompute.cli import OneLineParser
from precompute.metrics import METRICS
from precompute.console import first_line
from precompute.conditions.contrasts import with_default
from precompute.report import compare, head_tables, lexical_tables, value_weighted_tables
from precompute.report import patching_summary
from precompute.report.condition_tables import ReportError, kind_order, render

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
USAGE = """Print a run's tables in the form of the paper's Table 1: one line per ablation condition (the measure's mean
over queries, delta to the unablated baseline, a mark from the Holm-corrected paired t-test; each analysis -
attention, components, subspace - is its own Holm family), per-layer sweeps and head ablations as grids, component
ablations as a component x layer grid, QK-subspace conditions with their head's own change, then the activation
patching summary and the command that reruns the run. Exit codes: 0 printed, 1 unexpected failure (one line), 2 not a finished run, no ablations,
unknown measure or scope, or a damaged table."""


def open_reader(run: Path):
    """The run through the reader's opening rule (:func:`matching_atlas.open_run`); ReportError with its reason."""
    import matching_atlas as ma

    try:
        return ma.open_run(run)
    except ma.RunError as err:
        raise ReportError(str(err)) from err


def records(df) -> list[dict]:
    """A DataFrame's rows as dicts, missing values as None."""
    return df.astype(object).where(df.notna(), None).to_dict("records")


def load(run, measure: str, scope: str):
    """(manifest, measure, Table 1 rows as dicts: :meth:`matching_atlas.Run.table1`) of a run (a folder, or a run the
    reader opened); ReportError otherwise."""
    reader = open_reader(run) if isinstance(run, (str, Path)) else run
    if not reader.has("ablation_summary"):
        raise ReportError(f"{reader.path} has no ablations; add them with python -m precompute (same flags) --ablations "
                          "directions,groups")
    available = reader.ablation_options()
    scopes = sorted(set(available["scope"]))
    if scope not in scopes:
        raise ReportError(f"scope {scope!r} is not in this run; it has {', '.join(scopes)}")
    measures = {m.lower(): m for m in available[available["scope"] == scope]["measure"]}
    if measure.lower() not in measures:
        raise ReportError(f"measure {measure!r} is not in this run; it has {', '.join(measures.values())} "
                          "(add one with python -m precompute ... --measures)")
    measure = measures[measure.lower()]
    return reader.info.manifest, measure, records(reader.table1(measure, scope))


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
    p.add_argument("--contrasts", metavar="A:B,...",
                   help="pairs of conditions compared directly, query by query (paired t-test of the measure, "
                   "bootstrap intervals of the ranking statistics): condition names over all layers or condition ids, "
                   "after Q->D vs D->Q (q_d:d_q), which is always compared. Default: the run's job --contrasts")
    p.add_argument("--sort", choices=("name", "delta"), default="name", help="row order of the direction and group "
                   "tables. Default: %(default)s")
    c = p.add_argument_group("comparing two runs", "Instead of RUN's tables: RUN and OTHER's per-layer profiles of one "
                             "summary metric, aligned by relative depth or by layer index.")
    c.add_argument("--compare", type=Path, metavar="OTHER", help="a second run folder")
    c.add_argument("--metric", default="q_d", help="head_attention metric compared: "
                   f"{', '.join(METRICS)}. Default: %(default)s")
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
            runs = [open_reader(run) for run in (args.run, args.compare)]
            try:
                sys.stdout.write(compare.render(*runs, args.metric, args.align, args.neg_type))
            except ValueError as err:
                raise ReportError(str(err)) from err
            return EXIT_OK
        reader = open_reader(args.run)
        manifest = reader.info.manifest
        if reader.has("ablation_summary"):
            _, measure, rows = load(reader, args.measure, args.scope)
            modes = [args.mode] if args.mode else None
            try:
                contrasts = reader.declared_contrasts() if args.contrasts is None else with_default(args.contrasts)
            except ValueError as err:
                raise ReportError(str(err)) from err
            sys.stdout.write(render(manifest, args.run, measure, args.scope, rows, kinds, modes, args.sort, contrasts))
        else:  # the head sections and patching need no ablations
            sys.stdout.write(f"{args.run}: no ablations, so no Table 1 (add them: rerun the command below with "
                             "--ablations directions,groups)\n")
        seed = manifest.identity.seed or 0
        contrasts_frame = reader.head_contrasts() if reader.has("head_contrasts") else None
        lines = (head_tables.render(contrasts_frame) + head_tables.alignment_lines(reader, seed)
                 + lexical_tables.render(reader, seed) + value_weighted_tables.render(reader, seed))
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.write(patching_summary.render(reader, manifest.model.segment_labels))
        sys.stdout.write(rerun_block(manifest, args.run))
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # anything else (a bug, a store DuckDB cannot read): one line, never a traceback
        print(f"error: unexpected {type(err).__name__}: {first_line(err)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


