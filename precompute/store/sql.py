"""SQL text that the job and the app write themselves: a value as a quoted SQL string literal.

DuckDB takes parameters for values but not for the file of ``read_parquet`` or a ``SET``, so paths (and the
condition ids of an ``IN`` list) are written into the statement: always through :func:`literal`, whose quoting is the
only one in the code. Imports nothing.
"""

from __future__ import annotations


def literal(value: object) -> str:
    """``value`` (its ``str``) as a SQL string literal: single quotes around it, each quote inside doubled."""
    return "'" + str(value).replace("'", "''") + "'"
