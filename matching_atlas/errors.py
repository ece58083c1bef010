"""Errors as the reader's users see them (the app's pages, the report, a notebook): one line, never a traceback."""

from __future__ import annotations

from precompute.console import first_line


def error_text(err: BaseException) -> str:
    """An exception as one line: its message's first line (DuckDB puts the message there and the query context after
    it), prefixed with the exception's type unless the message already names its kind."""
    text = first_line(err)
    return text if _names_its_kind(err, text) else f"{type(err).__name__}: {text}"


def _names_its_kind(err: BaseException, text: str) -> bool:
    """DuckDB's messages start with their kind ("Parser Error: ...", "Permission Error: ...")."""
    head = text.split(":", 1)[0]
    return head.endswith(("Error", "Exception")) or type(err).__module__.split(".")[0] in ("duckdb", "_duckdb")
