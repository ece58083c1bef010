"""Which analyses a run holds and which it lacks, each with the exact ``python -m precompute`` command that adds it.

The analyses are read from their declarations, not listed here: the condition sets of ``--ablations`` from the
registered condition kinds (:data:`precompute.conditions.REGISTRY`), the patching experiments from
:data:`precompute.names.PATCHING_EXPERIMENTS`, and each command from the job's settings
(:func:`precompute.config.rerun_command` over the run's recorded settings): run, it resumes the run (same identity)
and computes only what it lacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from matching_atlas.reading import Reader
from precompute.conditions import REGISTRY
from precompute.config import rerun_command
from precompute.names import PATCHING_EXPERIMENTS


class AnalysisTables(Reader):
    """The methods of :class:`matching_atlas.Run` that say what the run holds and how to add the rest."""

    def command(self, **changes: Any) -> str:
        """The precompute command that resumes this run: every setting of its last job (from its manifest) with
        ``changes`` (JobConfig field -> value, e.g. ``ablations=("heads",)``) replacing theirs, and ``--out`` the run's
        folder (relative to the working folder when inside it). Every word is shell-quoted."""
        return command_for(self.info.path, self.info.manifest.job_settings() if self.info.manifest else {}, changes)

    def analyses(self) -> pd.DataFrame:
        """One row per analysis the job can compute: ``analysis`` (its name: ``ablations:heads``, ``patching:cls``,
        ...), ``title``, ``present`` (whether the run holds it), ``note`` (why it cannot be computed for this
        model, where the job said so) and ``command`` (the command that adds it; None when present or impossible)."""
        rows = [self._row("summaries", "Attention summaries per pair, layer and head", True, {}),
                self._spectra(),
                self._row("contrasts", "Matching-head statistics (head_contrasts)", self.has("head_contrasts"), {})]
        kinds = set(self.conditions()["kind"]) if self.has("ablation_conditions") else set()
        for kind in REGISTRY.values():
            if kind.condition_set:
                rows.append(self._row(f"ablations:{kind.condition_set}", kind.title, kind.name in kinds,
                                      {"ablations": (kind.condition_set,)}))
        done = set(self.patching_experiments()["experiment"]) if self.has("patching_pairs") else set()
        for experiment in PATCHING_EXPERIMENTS:
            rows.append(self._row(f"patching:{experiment}", f"Activation patching, experiment {experiment}",
                                  experiment in done, {"patching": (experiment,)}))
        return pd.DataFrame(rows, columns=["analysis", "title", "present", "note", "command"])

    def columns(self) -> pd.DataFrame:
        """Every table and view of the run with its columns and types (``table``, ``column``, ``type``), in order."""
        return self._frame("""
            SELECT table_name AS "table", column_name AS "column", data_type AS type
            FROM duckdb_columns() WHERE NOT internal AND schema_name = 'main'
            ORDER BY table_name, column_index
        """)

    def _row(self, name: str, title: str, present: bool, changes: Mapping[str, Any], note: str | None = None) -> dict:
        command = None if present or note else self.command(**changes)
        return {"analysis": name, "title": title, "present": bool(present), "note": note, "command": command}

    def _spectra(self) -> dict:
        info = self.info.manifest.spectra if self.info.manifest else None
        note = None
        if not self.has("svd") and info is not None and info.computed is False:
            note = f"not computed for this model: {info.reason or 'no reason recorded'}"
        return self._row("spectra", "QK spectra and alignment (svd)", self.has("svd"), {}, note)


def command_for(run: Path, settings: Mapping[str, Any], changes: Mapping[str, Any] | None = None) -> str:
    """:meth:`AnalysisTables.command` of the run folder ``run`` whose last job had ``settings`` (by field name)."""
    try:
        out = Path(run).resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        out = Path(run)
    return rerun_command(settings, out, **(changes or {}))
