"""The app opens a run only after the job's own checks on every file (app/verification.py), cached per file state:
a flipped bit in a data page of any table, a table copied from another run or a manifest value the schema does not
allow makes the run "cannot open" with a one-line reason naming the file; nothing of it is shown; older stores keep
opening; the cache never turns a changed file or a forged entry into "verified"."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from matching_atlas import verification
from app.runs import run_labels
from matching_atlas.opening import EAGER_ENV, find_runs, inspect_run
from matching_atlas.verification import CACHE_ENV, DEFAULT_CACHE, FileCheck
from precompute.store import integrity
from precompute.store.schema import TABLES
from tests.app.synthetic import build_run
from tests.precompute.store.test_old_stores import RUN as V1_RUN

PUBLIC = sorted(name for name, table in TABLES.items() if not table.internal)
A, B = "trec-dl-2020__tiny-t5", "trec-dl-2019__tiny-t5"


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> Path:
    """Two runs with every public table (MonoT5-like, so decoder_cross_attention too) and the same row counts in
    each, of different identities (dataset, seed): only the identity tells their tables apart."""
    root = tmp_path_factory.mktemp("twins")
    for dataset, seed in (("trec-dl-2020", 0), ("trec-dl-2019", 1)):
        build_run(root, dataset=dataset, model="tiny-t5", family="monot5", layers=2, heads=2, n_queries=2, seed=seed)
    return root


@pytest.fixture
def run_a(twins, tmp_path) -> Path:
    """A private copy of run A (new inodes: nothing of it is in the verification cache yet)."""
    shutil.copytree(twins / A, tmp_path / A)
    return tmp_path / A


def flip_a_bit_in_a_data_page(path: Path) -> None:
    """Flip one bit of the last byte of the largest column chunk of the first row group: the end of its last data
    page's payload (a chunk ends where its last page's data ends), so the footer stays readable."""
    md = pq.read_metadata(path)
    group = md.row_group(0)
    chunk = max((group.column(j) for j in range(group.num_columns)), key=lambda c: c.total_compressed_size)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + chunk.total_compressed_size - 1] ^= 0x10
    path.write_bytes(bytes(data))


def test_the_twins_hold_every_public_table(twins):
    for name in (A, B):
        run = inspect_run(twins / name)
        assert run.verified and sorted(run.tables) == PUBLIC, (run.problem, sorted(set(PUBLIC) - run.tables))
    for table in PUBLIC:
        assert pq.read_metadata(twins / A / f"{table}.parquet").num_rows == \
            pq.read_metadata(twins / B / f"{table}.parquet").num_rows, table


@pytest.mark.parametrize("table", PUBLIC)
def test_a_flipped_bit_in_a_data_page_makes_the_run_unopenable(run_a, table):
    file = run_a / f"{table}.parquet"
    flip_a_bit_in_a_data_page(file)
    spec = TABLES[table]
    integrity.check_footer(file, table, spec.schema)  # the footer is intact: only reading the pages finds it
    run = inspect_run(run_a)
    assert not run.ok and run.problem.startswith(f"{file} is damaged") and "\n" not in run.problem, run.problem
    assert run_labels(find_runs(run_a.parent))[A].endswith("(cannot open)")


@pytest.mark.parametrize("table", PUBLIC)
def test_a_table_copied_from_another_run_makes_the_run_unopenable(twins, run_a, table):
    file = run_a / f"{table}.parquet"
    shutil.copy(twins / B / f"{table}.parquet", file)  # same columns and row count: only its identity differs
    run = inspect_run(run_a)
    assert not run.ok and run.problem.startswith(f"{file} was written by another run: its dataset is "
                                                 "'/nowhere/trec-dl-2019', the manifest's is '/nowhere/trec-dl-2020'")
    assert "\n" not in run.problem


def test_a_table_without_identity_in_a_run_whose_tables_record_one(run_a):
    """A table rewritten by another tool (or an older version) in a run whose other files record the identity."""
    file = run_a / "svd.parquet"
    pq.write_table(pq.read_table(file), file)
    assert "does not record which run wrote it, the run's other tables do" in inspect_run(run_a).problem


@pytest.mark.parametrize("field, value, said", [
    ("heads", 30_000_000, "model.heads is 30000000, expected an integer from 1 to 128"),
    ("layers", -2, "model.layers is -2, expected an integer from 1 to 128"),
    ("layers", "2", 'model.layers is "2", expected an integer from 1 to 128'),
])
def test_a_manifest_value_the_schema_does_not_allow(run_a, app, field, value, said):
    """The run is listed as "cannot open" with the field named; nothing is built from the value (it was a 289 MB
    page message and 7.9 GB of memory for heads = 30000000)."""
    manifest = json.loads((run_a / "manifest.json").read_text())
    manifest["model"][field] = value
    (run_a / "manifest.json").write_text(json.dumps(manifest))
    run = inspect_run(run_a)
    assert not run.ok and said in run.problem and str(run_a / "manifest.json") in run.problem
    at = app(run_a.parent)
    assert not at.exception and at.title[0].value == "Matching Atlas"
    assert any(said in e.value for e in at.error) and len(at.sidebar.selectbox(key="run").options) == 1


def test_the_version_1_fixture_still_opens_and_nothing_is_written_into_it(app):
    """The store written before checksums, identities and schema version 2 (tests/fixtures/store-v1): its files carry
    no CRC or identity, so the checks that apply run (decoding, row counts, statistics, bounds), and it opens."""
    before = {p: p.stat().st_mtime_ns for p in V1_RUN.iterdir()}
    run = inspect_run(V1_RUN)
    assert run.verified, run.problem
    at = app(V1_RUN)
    assert not at.exception and not at.error and at.title[0].value.startswith("Overview")
    for page in ("head_atlas", "directions", "ablations", "spectra", "pair_explorer"):
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception and not at.error, page
    assert {p: p.stat().st_mtime_ns for p in V1_RUN.iterdir()} == before


# -- the cache -----------------------------------------------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch):
    """The files integrity.verify reads whole, in order."""
    calls: list[Path] = []
    real = integrity.verify

    def verify(path, *args, **kwargs):
        calls.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(verification.integrity, "verify", verify)
    return calls


def restart() -> None:
    """What a new server process sees: no verification outcome in memory."""
    verification._CACHES.clear()


def test_each_file_is_verified_once_per_state(run_a, counted):
    tables = len(list(run_a.glob("*.parquet")))
    assert inspect_run(run_a).verified and len(counted) == tables
    assert inspect_run(run_a).verified and len(counted) == tables  # same process: from memory
    restart()
    assert inspect_run(run_a).verified and len(counted) == tables  # next server start: from the cache folder
    os.utime(run_a / "svd.parquet")  # a new state of one file
    assert inspect_run(run_a).verified and counted[tables:] == [run_a / "svd.parquet"]


def test_a_file_changed_after_verification_with_its_size_and_mtime_kept_is_verified_again(run_a, counted):
    file = run_a / "pairs.parquet"
    assert inspect_run(run_a).verified
    st = file.stat()
    flip_a_bit_in_a_data_page(file)
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime set back: ctime cannot be
    assert file.stat().st_size == st.st_size and file.stat().st_mtime_ns == st.st_mtime_ns
    restart()
    run = inspect_run(run_a)
    assert not run.ok and run.problem.startswith(f"{file} is damaged") and counted[-1] == file


def test_a_forged_or_moved_cache_entry_is_not_verified(run_a, counted):
    damaged = run_a / "head_attention.parquet"
    flip_a_bit_in_a_data_page(damaged)
    info = inspect_run(run_a, verify_below=0)  # footers only: nothing verified yet
    check = next(c for c in info.checks if c.path == damaged)
    good = next(c for c in info.checks if c.table == "pairs")
    folder = verification.cache_folder()
    assert verification.verify_file(good) is None
    (folder / f"{check.key()}.entry").write_text("0" * 64 + "\n")  # "verified", with a made-up MAC
    restart()
    assert not inspect_run(run_a).ok and counted[-1] == damaged
    shutil.copy(folder / f"{good.key()}.entry", folder / f"{check.key()}.entry")  # a real entry of another file
    restart()
    assert not inspect_run(run_a).ok and counted[-1] == damaged
    assert [p for p in counted if p == damaged] == [damaged, damaged]


def test_the_cache_lives_outside_the_run_folder_and_the_repository(run_a, tmp_path):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run_a.iterdir())
    inspect_run(run_a)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run_a.iterdir()) == before
    assert verification.cache_folder({}) == DEFAULT_CACHE == Path(__file__).resolve().parents[2] / "data/cache/verified"
    assert "/data/cache/" in (Path(__file__).resolve().parents[2] / ".gitignore").read_text().split()
    assert verification.cache_folder({CACHE_ENV: str(tmp_path / "c")}) == tmp_path / "c"
    secret = verification.cache_folder() / "secret"
    assert secret.stat().st_mode & 0o077 == 0  # readable by the server's user only


def test_a_cache_folder_set_inside_the_run_is_not_written(run_a, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(run_a / "cache"))
    restart()
    assert inspect_run(run_a).verified and not (run_a / "cache").exists()


def test_a_large_run_is_verified_when_opened_and_never_shown_before(twins, tmp_path, app, monkeypatch):
    """Runs above $ATLAS_VERIFY_AT_LISTING_MB are listed unverified and verified when chosen (with a progress bar);
    a damaged one then shows its reason, never its data."""
    monkeypatch.setenv(EAGER_ENV, "0")
    good, bad = tmp_path / "good" / A, tmp_path / "bad" / A
    shutil.copytree(twins / A, good)
    shutil.copytree(twins / A, bad)
    flip_a_bit_in_a_data_page(bad / "head_attention.parquet")
    listed = find_runs(good.parent)[0]
    assert listed.ok and not listed.verified and run_labels([listed])[A].endswith("(not verified yet)")
    at = app(good.parent)
    assert not at.exception and not at.error and at.title[0].value.startswith("Overview")
    assert inspect_run(good).verified
    at = app(bad.parent)
    assert not at.exception and at.title[0].value == "Matching Atlas" and not at.get("vega_lite_chart")
    assert any(f"{bad / 'head_attention.parquet'} is damaged" in e.value for e in at.error)
    assert not inspect_run(bad).ok


def test_a_verification_in_progress_is_joined_not_repeated(run_a, counted):
    info = inspect_run(run_a, verify_below=0)
    first = verification.start(info.key, info.unverified)
    second = verification.start(info.key, info.unverified)
    assert first is second
    first.finished.wait(60)
    assert first.problem is None and first.rows_done == first.rows_total > 0
    assert len(counted) == len(info.unverified)
    assert isinstance(info.checks[0], FileCheck)


def test_a_verification_that_breaks_is_one_line_and_shows_nothing(run_a, app, monkeypatch):
    """Any failure of the check itself (here MemoryError) becomes the run's one-line reason, never a hang or a
    traceback, and is not cached: the next opening verifies again."""
    monkeypatch.setenv(EAGER_ENV, "0")

    def broken(*args, **kwargs):
        raise MemoryError("no memory left for a row group")

    monkeypatch.setattr(verification.integrity, "verify", broken)
    at = app(run_a.parent)
    assert not at.exception and at.title[0].value == "Matching Atlas"
    assert any("could not be verified (MemoryError: no memory left for a row group)" in e.value for e in at.error)
    monkeypatch.undo()
    assert inspect_run(run_a).verified
