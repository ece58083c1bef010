"""Which store the app serves, how its runs are labelled, and where a run's model lives on this machine.

The store root is fixed when the server starts: ``streamlit run app/main.py -- --store PATH``, else
$ATLAS_STORE, else ``data/store``. It never comes from a URL or a widget, so a shared link cannot
point the app (or its SQL page) at another folder of the server; a link may only pick one of the
runs listed here, by folder name. ``PATH`` may be a store (a folder of run folders) or a single run
folder. Runs are told apart by their folder: two runs of the same dataset x model (the README's
``--out ...-all`` layout) are two entries. Whether each run can be opened is the reader's rule
(:func:`matching_atlas.opening.inspect_run`). Nothing here imports Streamlit.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

from matching_atlas.opening import RunInfo

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STORE = Path("data") / "store"
STORE_ENV = "ATLAS_STORE"


def store_from_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Path:
    """The store root: ``--store`` (after ``streamlit run app/main.py --``), else $ATLAS_STORE, else data/store.

    The default is looked up in the working directory first and then in the repository, so
    ``streamlit run app/main.py`` finds ``data/store`` from the repository root or anywhere else.
    """
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--store")
    args, _ = parser.parse_known_args(argv or [])
    if args.store:
        return Path(args.store).expanduser()
    if environ.get(STORE_ENV):
        return Path(environ[STORE_ENV]).expanduser()
    if (Path.cwd() / DEFAULT_STORE).is_dir():
        return DEFAULT_STORE
    return REPO / DEFAULT_STORE


def run_labels(runs: list[RunInfo]) -> dict[str, str]:
    """A label per run, keyed by folder name: dataset x model, plus the folder where two runs share that label
    (a selectbox tells its options apart by their labels), plus "(cannot open)" for a refused run."""
    counts = Counter(r.label for r in runs)
    return {r.name: (r.label if counts[r.label] == 1 else f"{r.label} ({r.name})")
            + ("" if r.verified else " (not verified yet)" if r.ok else " (cannot open)") for r in runs}


def model_folder(run: RunInfo) -> tuple[Path | None, str]:
    """The local folder of the run's model, if there is one, and a reason when there is none."""
    names = [str(v) for v in (run.model.path, run.model.id) if v]
    if not names:
        return None, "the manifest names no model"
    for name in names:
        cand = Path(name).expanduser()
        for path in ([cand] if cand.is_absolute() else [Path.cwd() / cand, REPO / cand, run.path / cand]):
            if (path / "config.json").is_file():
                return path.resolve(), ""
    return None, f"the model {names[-1]!r} named in the manifest is not a folder on this machine"
