"""Fixtures of the app tests: tiny stores built in code (see synthetic.py) and an AppTest factory."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from tests.app.synthetic import build_bad_store, build_family_store, build_store

MAIN = Path(__file__).resolve().parents[2] / "app" / "main.py"
DL20 = "trec-dl-2020__tiny-ce"
DL19 = "trec-dl-2019__tiny-ce"
SMALL = "trec-dl-2020__small-ce"


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """Two full runs of one model (dl20, dl19) and a second model on dl20 without optional tables."""
    return build_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="session")
def bad_store(tmp_path_factory) -> Path:
    """Only refused runs: another schema version, and one still running."""
    return build_bad_store(tmp_path_factory.mktemp("bad-store"))


@pytest.fixture(scope="session")
def family_store(tmp_path_factory) -> Path:
    """Other families: a causal decoder (6 layers, every optional table), a MonoT5-like run (decoder cross-attention),
    a 12-layer encoder and a schema-version-1 run (synthetic.build_family_store)."""
    return build_family_store(tmp_path_factory.mktemp("family-store"))


def _direct(root: Path):
    con = duckdb.connect()

    def run(run_name: str, text: str, params=None):
        tables = {p.stem: f"read_parquet('{p}')" for p in (root / run_name).glob("*.parquet")}
        return con.execute(text.format(**tables), params or []).df()

    return con, run


@pytest.fixture
def sql(store):
    """Direct DuckDB queries on the test store's Parquet files: sql(run, "SELECT ... FROM {pairs} ...")."""
    con, run = _direct(store)
    yield run
    con.close()


@pytest.fixture
def family_sql(family_store):
    """The same on the family store."""
    con, run = _direct(family_store)
    yield run
    con.close()


@pytest.fixture(scope="session", autouse=True)
def _no_component_scan():
    """AppTest scans every installed distribution for Streamlit v2 component manifests on each new AppTest
    (~0.3 s here, most of a page run); the app uses no such component, so the scan is skipped in these tests."""
    from streamlit.components.v2.component_manager import BidiComponentManager

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BidiComponentManager, "discover_and_register_components", lambda self, **kwargs: None)
        yield


@pytest.fixture
def app(monkeypatch):
    """app(store, **query_params) -> an AppTest of app/main.py that has run once."""
    from streamlit.testing.v1 import AppTest

    def make(store_path, page: str | None = None, **params):
        monkeypatch.setenv("ATLAS_STORE", str(store_path))
        at = AppTest.from_file(str(MAIN), default_timeout=60)
        for key, value in params.items():
            at.query_params[key] = value
        at.run()
        if page:
            # The first run lands on the default page, which drops other pages' parameters from the URL
            # (as a browser would when navigating): give them again for the page's first run.
            at.switch_page(f"views/{page}.py")
            for key, value in params.items():
                at.query_params[key] = value
            at.run()
        return at

    return make
