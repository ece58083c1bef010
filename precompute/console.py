"""What the job tells its user while it works: one-line log messages and tqdm progress bars.

The ground floor of the package: it imports nothing of precompute, so every stage, pass and the
job can report without importing each other. Messages go to stderr (stdout stays free for data).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first non-empty line (DuckDB, pyarrow and transformers put the query, the
    context or a hint after it); the exception's type when it has no message."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most ``limit`` characters: libraries (transformers, ir_measures) put
    the detail on a second line, so the lines are joined rather than cut at the first."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def log(message: str) -> None:
    """One line to stderr, flushed at once (a job's log is read while it runs)."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class Console:
    """Where a run reports: log lines always, progress bars unless ``progress`` is off (--no-progress). Every rank
    of a distributed job but rank 0 is ``quiet`` (neither), so the log reads like a single process's."""

    progress: bool = True
    quiet: bool = False

    def log(self, message: str) -> None:
        if not self.quiet:
            log(message)

    def bar(self, total: int, desc: str, unit: str):
        """A tqdm bar with rate and ETA (a disabled one with --no-progress); use it as a context manager."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=not self.progress or self.quiet,
                    smoothing=0.1)
