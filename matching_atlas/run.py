"""The opened run (:class:`Run`: every group of results as one object) and :func:`open_run`, which applies the opening
rule; the package exports them lazily (``matching_atlas/__init__.py``), so importing a light module of the package
(the ``atlas`` command) does not load pandas and pyarrow."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from matching_atlas.ablations import AblationTables
from matching_atlas.analyses import AnalysisTables
from matching_atlas.depth import CompareTables
from matching_atlas.effects import EffectTables
from matching_atlas.heads import HeadTables
from matching_atlas.opening import RunError, RunInfo, inspect_run, openable
from matching_atlas.pairs import PairTables
from matching_atlas.patching import PatchingTables

__all__ = ["Run", "inspect", "open_run"]


class Run(PairTables, HeadTables, AblationTables, PatchingTables, CompareTables, AnalysisTables,
          EffectTables):
    """One opened run (see the package doc, :mod:`matching_atlas`). ``info``: what the opening rule found (path, manifest, tables)."""

    @property
    def path(self) -> Path:
        return self.info.path

    @property
    def name(self) -> str:
        return self.info.name

    def __repr__(self) -> str:
        return f"Run({str(self.info.path)!r}: {self.info.label})"

    def sql(self, text: str) -> pd.DataFrame:
        """One read-only SELECT over the run's tables (by name) as a DataFrame, on a connection closed the way the
        app's SQL page closes its own (:func:`matching_atlas.connection.lock`: no file outside the run, no
        extension, no setting changed); anything else raises :class:`matching_atlas.connection.SqlRefused`."""
        from matching_atlas.connection import check_select, lock, open_connection

        con = open_connection(self.info.path, agg_in_memory_mb=0)
        try:
            lock(con, (self.info.path,))
            return con.execute(check_select(con, text)).df()
        finally:
            con.close()


def open_run(path: str | Path, *, progress: bool | None = None, threads: int | None = None) -> Run:
    """The run folder at ``path`` (or ``hf://datasets/USER/NAME``) once the opening rule accepts it; RunError with
    the one-line reason otherwise.
    Files not verified yet are verified first (once per file state, cached); ``progress`` (default: when stderr is a
    terminal or a notebook) shows a tqdm bar meanwhile."""
    if str(path).startswith("hf://"):  # a run on the Hub: copied into a local cache and verified (matching_atlas.hub)
        from matching_atlas.hub import fetch

        try:
            path = fetch(str(path))
        except Exception as err:  # hub.HubError, or huggingface_hub missing
            raise RunError(str(err)) from err
    show = _progress_bar() if (progress if progress is not None else _interactive()) else None
    return Run(openable(Path(path), show), threads=threads)


def _interactive() -> bool:
    return "ipykernel" in sys.modules or bool(getattr(sys.stderr, "isatty", lambda: False)())


def _progress_bar():
    """A ``show(info, job)`` callback of :func:`matching_atlas.opening.verify_now` drawing a tqdm bar."""
    from tqdm.auto import tqdm

    bars = {}

    def show(info: RunInfo, job) -> None:
        bar = bars.get("bar")
        if job is None:
            if bar is not None:
                bar.close()
                bars.clear()
            return
        if bar is None:
            bar = bars["bar"] = tqdm(total=int(job.rows_total or 0), desc=f"verifying {info.name}", unit="rows")
        bar.update(int(job.rows_done or 0) - bar.n)

    return show


def inspect(path: str | Path) -> RunInfo:
    """What the opening rule makes of the folder at ``path`` without verifying a large run (the app's run list)."""
    return inspect_run(Path(path))
