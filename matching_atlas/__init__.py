"""Read a run of ``python -m precompute`` as pandas DataFrames: the one reader of the store.

The app's pages, ``python -m precompute.report`` and notebooks all read through it::

    import matching_atlas as ma
    run = ma.open_run("data/store/<run>")     # RunError (one line) when the run cannot be opened
    run.table1()                              # Table 1: one row per ablation condition
    run.analyses()                            # what the run holds, and the command that adds what it lacks

:func:`open_run` applies the opening rule (:mod:`matching_atlas.opening`: manifest, schema version, status,
required tables, every file verified); each method of :class:`Run` is one table or derived result, defined once in
the module of its group (:mod:`~matching_atlas.pairs`, :mod:`~matching_atlas.heads`,
:mod:`~matching_atlas.ablations`, :mod:`~matching_atlas.patching`, :mod:`~matching_atlas.depth`,
:mod:`~matching_atlas.analyses`, :mod:`~matching_atlas.effects`). Nothing here imports Streamlit or torch. docs/reader.md has worked examples.
"""

from __future__ import annotations

import importlib

__all__ = ["Run", "RunError", "RunInfo", "Slice", "inspect", "open_run"]

# Where each exported name lives. Loaded on first use (PEP 562), not at import: ``atlas precompute`` imports this
# package before the job, and the job must choose pyarrow's memory pool before pyarrow is loaded
# (:func:`precompute.allocator.use_system_pool`); ``atlas --help`` answers without loading pandas.
_EXPORTS = {"Run": "run", "open_run": "run", "inspect": "run", "RunError": "opening", "RunInfo": "opening",
            "Slice": "slice"}


def __getattr__(name: str):
    """An exported name (from its module) or a submodule (``ma.depth``), imported on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"matching_atlas.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f"matching_atlas.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"matching_atlas.{name}":
            raise
        raise AttributeError(f"module 'matching_atlas' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
