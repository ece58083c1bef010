"""``atlas app``: start the explorer with ``streamlit run`` on the app's own ``main.py``, found where the ``app``
package is (a clone or site-packages), with the store root it is given; Streamlit's own options pass through.

The process becomes Streamlit's (``exec``), so stopping ``atlas app`` stops the server, with no orphan left behind.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2
STORE_ENV = "ATLAS_STORE"  # app.runs reads the same variable; not imported, so `atlas app --help` needs no Streamlit
DEFAULT_STORE = Path("data") / "store"


class AppError(Exception):
    """A problem with ``atlas app``'s arguments or installation, worded as one line."""


def build_parser(prog: str) -> argparse.ArgumentParser:
    from precompute.cli import OneLineParser

    p = OneLineParser(prog=prog, description="Open the Matching Atlas explorer on a store (a folder of run folders) "
                      "or on one run folder. Other options (--server.port 8502, --server.address 0.0.0.0, ...) are "
                      "passed to `streamlit run`.")
    p.add_argument("--store", help=f"store root or run folder. Default: ${STORE_ENV}, else {DEFAULT_STORE}")
    return p


def command(store: Path, streamlit_options: list[str]) -> list[str]:
    """The ``streamlit run`` command line of the app on ``store``."""
    spec = importlib.util.find_spec("app")
    if spec is None or spec.origin is None:
        raise AppError("the app package is not installed; pip install 'matching-atlas[app]'")
    main_script = Path(spec.origin).parent / "main.py"
    return [sys.executable, "-m", "streamlit", "run", str(main_script), *streamlit_options, "--",
            "--store", str(store)]


def resolve_store(given: str | None, environ: dict[str, str] | None = None) -> Path:
    """The store root as an absolute folder (the server's working directory does not matter then); AppError when it
    is not a folder."""
    environ = os.environ if environ is None else environ
    text = given or environ.get(STORE_ENV)
    if text and text.startswith("hf://"):  # a run on the Hub: fetched and verified into the local cache first
        from matching_atlas.hub import HubError, fetch

        try:
            return fetch(text).resolve()
        except HubError as err:
            raise AppError(str(err)) from err
    store = Path(text or DEFAULT_STORE).expanduser()
    if not store.is_dir():
        source = "--store" if given else (f"${STORE_ENV}" if environ.get(STORE_ENV) else "the default store")
        raise AppError(f"{source} {store} is not a folder; pass --store with a folder of runs (the job's --store, "
                       "data/store by default) or one run folder")
    return store.resolve()


def main(argv: list[str], prog: str = "atlas app") -> int:
    parser = build_parser(prog)
    args, streamlit_options = parser.parse_known_args(argv)
    try:
        if importlib.util.find_spec("streamlit") is None:
            raise AppError("the explorer needs Streamlit and Altair: pip install 'matching-atlas[app]'")
        argv_of_server = command(resolve_store(args.store), streamlit_options)
    except AppError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    sys.stdout.flush()
    os.execv(argv_of_server[0], argv_of_server)
    return 0  # not reached: the process is Streamlit's now
