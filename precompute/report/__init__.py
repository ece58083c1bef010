"""Print a run's tables for a terminal, in the form of the paper's Table 1.

    python -m precompute.report RUN [--measure nDCG@10] [--scope pairs] [--kind direction,group] [--mode zero]

One line per condition: condition, the measure's mean over queries, delta to the unablated baseline and a
significance mark from the Holm-corrected paired t-test (``ablation_summary``). Per-layer sweeps print as a
condition x layer grid of deltas, head ablations as a layer x head grid, component ablations as a component x layer
grid, QK-subspace interventions with the change of their head's own attention; each analysis (attention, components,
subspace) is its own Holm family. Runs with activation patching end with its summary (top heads by mean effect with
95% confidence intervals, components by layer). Reads the store with DuckDB only.
Exit codes: 0 printed, 1 unexpected failure (one line), 2 not a finished run / no ablations / unknown measure or
scope / a damaged table.
"""

from __future__ import annotations

from precompute.report.cli import load, main, records
from precompute.report.condition_tables import ReportError, kind_order, mark, render

__all__ = ["ReportError", "kind_order", "load", "main", "mark", "render"]
