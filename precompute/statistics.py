"""The multiple-testing vocabulary shared by the job, the report and the app: Holm's correction, the
family-wise error rate and how a corrected p-value is written (stars and digits).

One place, so that a head marked ``**`` on the app's head atlas is the head the report marks ``**``.
Imports numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ALPHA = 0.05  # family-wise error rate: a Holm-corrected p below it is significant
MARKS: tuple[tuple[float, str], ...] = ((0.001, "***"), (0.01, "**"), (0.05, "*"))
STARS_LEGEND = "* p<0.05  ** p<0.01  *** p<0.001 (Holm-corrected)"


def holm(pvalues: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values, in the input order; None/NaN stays NaN and is not counted as a test.

    The i-th smallest of m p-values becomes max_{j <= i} (m - j + 1) p_(j), capped at 1 (i, j 1-based).
    """
    p = np.array([np.nan if v is None else v for v in pvalues], dtype=np.float64)
    out = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    scaled = (len(order) - np.arange(len(order))) * p[order]
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def _missing(p: float | None) -> bool:
    return p is None or (isinstance(p, float) and np.isnan(p))


def stars(p: float | None, *, not_significant: str = "") -> str:
    """``***``, ``**``, ``*`` for a corrected p below 0.001, 0.01, 0.05; ``not_significant`` otherwise; "" when untested."""
    if _missing(p):
        return ""
    for level, mark in MARKS:
        if p < level:
            return mark
    return not_significant


def fmt_p(p: float | None, *, missing: str = "-") -> str:
    """A p-value in a table cell: ``1.2e-05`` below 0.001, else three decimals; ``missing`` when untested."""
    if _missing(p):
        return missing
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"
