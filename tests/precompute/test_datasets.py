"""Dataset resolution: aliases, local folders read through ir_datasets, runs, errors, and no writes to the data."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import re
import textwrap
import time
from pathlib import Path

import pytest

from precompute.datasets import ALIASES, Dataset, DatasetError, resolve
from tests.conftest import REPO

QUERIES = {"q1": "alpha query", "q2": "beta query", "q3": "gamma query", "q4": "unjudged query", "q6": ""}
DOCS = {f"d{i:02d}": f"passage number {i}" for i in range(1, 12)} | {"d12": ""}
QRELS = {
    "q1": {"d01": 2, "d02": 1, "d03": 0, "d13": 0},  # d13 has no text
    "q2": {"d04": 3, "d05": 0, "d06": 0, "d11": 0},
    "q3": {"d07": 1, "d08": 0, "d12": 0},  # d12 has an empty text
    "q5": {"d09": 0, "d10": 1},  # q5 has no query line (q6, not judged, has an empty text)
}
# Deliberately out of rank order, with a duplicate docid and a passage without text.
RUN_LINES = [
    "q1 Q0 d03 3 7.0 x",
    "q1 Q0 d11 1 9.0 x",
    "q1 Q0 d01 2 8.0 x",
    "q1 Q0 d13 4 6.0 x",
    "q1 Q0 d11 5 5.0 x",
    "q2 Q0 d04 1 3.5 x",
    "q2 Q0 d11 2 2.5 x",
]


def make_folder(root: Path, docs: dict[str, str] = DOCS) -> Path:
    """A tiny dataset folder in the layout of ../shared/data/trec-dl-2020 (shared with test_pairs)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "queries.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in QUERIES.items()))
    (root / "docs.tsv").write_text("".join(f"{d}\t{t}\n" for d, t in docs.items()))
    (root / "qrels.txt").write_text("".join(f"{q} 0 {d} {g}\n" for q, j in QRELS.items() for d, g in j.items()))
    (root / "runs").mkdir(exist_ok=True)
    (root / "runs" / "x.trec").write_text("\n".join(RUN_LINES) + "\n")
    return root


def listing(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` with its kind, size, mtime and content hash: equal listings = untouched folder."""
    entries = {}
    for path in [folder, *sorted(folder.rglob("*"))]:
        st = path.stat()
        digest = hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else None
        entries[str(path.relative_to(folder))] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, digest)
    return entries


def make_read_only(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def make_writable(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "tiny")


def test_folder_reads_through_ir_datasets(tiny: Path, tmp_path: Path) -> None:
    ds = resolve(str(tiny), tmp_path / "cache")
    assert (ds.name, ds.source) == ("tiny", str(tiny.resolve()))
    assert ds.queries() == QUERIES
    assert list(ds.queries()) == list(QUERIES)
    assert ds.qrels() == QRELS
    assert ds.docs(["d01", "d12", "d13", "d01"]) == {"d01": "passage number 1", "d12": ""}
    assert ds.docs([]) == {}


def test_resolve_loads_nothing(tiny: Path, tmp_path: Path) -> None:
    ds = resolve(str(tiny), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    ds.docs(["d01"])
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["tiny"]


def test_runs(tiny: Path, tmp_path: Path) -> None:
    ds = resolve(str(tiny), tmp_path / "cache")
    assert ds.run_names() == ["x"]
    run = ds.run("x")
    assert [rank for _, rank, _ in run["q1"]] == [1, 2, 3, 4, 5]
    assert run["q1"][0] == ("d11", 1, 9.0)
    assert run["q2"] == [("d04", 1, 3.5), ("d11", 2, 2.5)]
    with pytest.raises(DatasetError, match="no run 'bm25'; available runs: x"):
        ds.run("bm25")


def test_bad_run_line_names_file_and_line(tiny: Path, tmp_path: Path) -> None:
    (tiny / "runs" / "bad.trec").write_text("q1 Q0 d01 1 2.0 x\nq1 d02 2\n")
    with pytest.raises(DatasetError, match=r"bad\.trec:2: expected a TREC run line"):
        resolve(str(tiny), tmp_path / "cache").run("bad")


@pytest.mark.parametrize(("file", "lines", "read", "message"), [
    ("queries.tsv", "q1\talpha query\nq2 beta query\n", "queries", r"queries\.tsv:2: expected 'id<TAB>text' \(2 tab-separated fields\), got 1"),
    ("queries.tsv", "q1\talpha\n\nq2\tbe\xffta\n", "queries", r"queries\.tsv:3: not UTF-8 text"),
    ("docs.tsv", "d01\tone\nd02\ttwo\tthree\n", "docs", r"docs\.tsv:2: expected 'id<TAB>text'.*got 3.*tabs inside a text"),
    ("qrels.txt", "q1 0 d01 2\nq1 0 d02\n", "qrels", r"qrels\.txt:2: expected a qrels line 'qid iteration docid grade' \(4 columns\), got 3"),
    ("qrels.txt", "q1 0 d01 2\nq1 0 d02 high\n", "qrels", r"qrels\.txt:2: the grade 'high' is not an integer"),
])
def test_parse_errors_name_file_and_line(file: str, lines: str, read: str, message: str, tiny: Path, tmp_path: Path) -> None:
    (tiny / file).write_bytes(lines.encode("latin-1"))
    ds = resolve(str(tiny), tmp_path / "cache")
    with pytest.raises(DatasetError, match=message):
        ds.queries() if read == "queries" else ds.qrels() if read == "qrels" else ds.docs(["d01"])


def test_a_docid_given_twice_is_refused(tiny: Path, tmp_path: Path) -> None:
    """ir_datasets would keep the second text silently; the job says where the two lines are (every time)."""
    (tiny / "docs.tsv").write_text("d01\tfirst text\nd02\tother\nd01\tsecond text\n")
    for _ in range(2):  # the failed build leaves no doc store that a second read would trust
        with pytest.raises(DatasetError, match=r"docs\.tsv:3: docid d01 was already given on line 1"):
            resolve(str(tiny), tmp_path / "cache").docs(["d01"])


def test_folders_with_the_same_name_do_not_share_a_doc_store(tmp_path: Path) -> None:
    first = make_folder(tmp_path / "a" / "data")
    second = make_folder(tmp_path / "b" / "data", docs={"d01": "another text"})
    cache = tmp_path / "cache"
    assert resolve(str(first), cache).docs(["d01"]) == {"d01": "passage number 1"}
    assert resolve(str(second), cache).docs(["d01"]) == {"d01": "another text"}


def test_read_only_copy_is_unchanged(tiny: Path, tmp_path: Path) -> None:
    make_read_only(tiny)
    try:
        before = listing(tiny)
        ds = resolve(str(tiny), tmp_path / "cache")
        ds.queries(), ds.qrels(), ds.docs(DOCS), ds.run("x")
        assert listing(tiny) == before
    finally:
        make_writable(tiny)


def test_aliases_are_lazy_registry_handles(tmp_path: Path) -> None:
    ds = resolve("dl20", tmp_path)
    assert (ds.name, ds.source, ds.run_names()) == ("dl20", ALIASES["dl20"], [])
    assert resolve(ALIASES["dl19"], tmp_path).name == "dl19"
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", r"unknown dataset 'nope': expected an alias \(dl19, dl20\), a local folder"),
        ("./no/such/folder", "dataset folder ./no/such/folder does not exist"),
        ("msmarco-passage", "has no queries or qrels"),
    ],
)
def test_resolve_errors(spec: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=message):
        resolve(spec, tmp_path)


def test_missing_file_is_named(tiny: Path, tmp_path: Path) -> None:
    (tiny / "qrels.txt").unlink()
    with pytest.raises(DatasetError, match=r"lacks qrels\.txt"):
        resolve(str(tiny), tmp_path)
    with pytest.raises(DatasetError, match="is a file"):
        resolve(str(tiny / "docs.tsv"), tmp_path)


def test_offline_registry_fails_fast_naming_a_local_folder(tmp_path: Path) -> None:
    """Network blocked in a child process (DNS fails), with an empty ir_datasets home so no cached copy helps."""
    script = textwrap.dedent(
        """
        import socket, sys
        def offline(*args, **kwargs):
            raise socket.gaierror(-2, "Name or service not known")
        socket.getaddrinfo = offline
        from pathlib import Path
        from precompute.datasets import DatasetError, resolve
        try:
            resolve("dl20", Path(sys.argv[1])).queries()
        except DatasetError as e:
            print(e)
        """
    )
    env = {**os.environ, "IR_DATASETS_HOME": str(tmp_path / "home")}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 10
    message = done.stdout.strip()
    assert message == (
        "dataset dl20 could not be downloaded (no network?); "
        "pass a local folder instead: --dataset ../shared/data/trec-dl-2020"
    ), done.stderr


# --- the real DL20 folder -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dl20(dl20_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return resolve(str(dl20_dir), tmp_path_factory.mktemp("cache"))


def test_dl20_counts(dl20: Dataset) -> None:
    qrels = dl20.qrels()
    assert len(dl20.queries()) == 54
    assert sum(map(len, qrels.values())) == 11386
    pool = {docid for judged in qrels.values() for docid in judged}
    texts = dl20.docs(pool)
    assert sum(docid in texts for judged in qrels.values() for docid in judged) == 5004
    assert dl20.run_names() == ["bm25", "bm25-rm3", "openai-ada2", "splade-pp-ed", "tasb"]
    assert all(len(ranked) == 100 for ranked in dl20.run("bm25").values())


def test_dl20_folder_is_unchanged(dl20_dir: Path, tmp_path: Path) -> None:
    """The real folder (read-only in CI) and a read-only copy: resolving and building the doc store writes nothing."""
    copy = tmp_path / "trec-dl-2020"
    shutil.copytree(dl20_dir, copy)
    make_read_only(copy)
    try:
        for folder in (dl20_dir, copy):
            before = listing(folder)
            ds = resolve(str(folder), tmp_path / "cache")
            ds.queries(), ds.qrels(), ds.docs(["1001344"]), ds.run("bm25")
            assert listing(folder) == before
    finally:
        make_writable(copy)


# --- what ir_datasets would read silently, refused before any work (issue 16) ----------------------------------


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import build

    return build("bert", tmp_path_factory.mktemp("bert"))


def edited(tiny_dataset: Path, tmp_path: Path, file: str, edit) -> Path:
    """A copy of the tiny dataset folder whose ``file`` is ``edit(its text)``."""
    folder = tmp_path / "data"
    shutil.copytree(tiny_dataset, folder)
    (folder / file).write_bytes(edit((folder / file).read_text()).encode("utf-8"))
    return folder


def replaced(n: int, change):
    """An edit of a file's text: line ``n`` (1-based) becomes ``change(line)``."""
    def edit(text: str) -> str:
        lines = text.splitlines()
        lines[n - 1] = change(lines[n - 1])
        return "\n".join(lines) + "\n"
    return edit


def grade(value: str):
    return lambda line: line.rsplit(" ", 1)[0] + " " + value


@pytest.mark.parametrize(("file", "edit", "message"), [
    ("queries.tsv", lambda text: text + "100\tanother text entirely\n",
     r"queries\.tsv:7: query id 100 was already given on line 1 with another text"),
    ("qrels.txt", lambda text: text + grade("9")(text.splitlines()[0]) + "\n",
     r"qrels\.txt:49: the judgment of query 100, passage \d+ was already given on line 1 with another grade"),
    ("qrels.txt", replaced(2, grade("128")),
     r"qrels\.txt:2: grade 128 \(query 100, passage \d+\) is outside -128\.\.127, the grades the store keeps"),
    ("qrels.txt", replaced(2, grade("-129")), r"qrels\.txt:2: grade -129 .*is outside -128\.\.127"),
    ("queries.tsv", replaced(3, lambda line: line.split("\t")[0] + "\t "),
     r"queries\.tsv:3: query 102 has an empty text but 8 judgments; give it its text, or remove its judgments"),
])
def test_what_ir_datasets_would_read_silently_is_refused(file, edit, message, tiny_dataset, bert, tmp_path, capsys):
    """A repeated query id (the last text won: one query's pairs scored with another's text), two grades for one
    pair (one was kept), a grade pairs.grade cannot hold (failed after the summary pass, naming no file), a judged
    query with an empty text (dropped without a word): one line naming file and line, exit 2, no pass."""
    from tests.precompute.conftest import refused

    folder = edited(tiny_dataset, tmp_path, file, edit)
    line = refused(folder, bert, tmp_path, capsys)
    assert re.search(re.escape(str(folder)) + "/" + message, line), line


def test_identical_repeated_lines_count_once(tiny: Path, tmp_path: Path) -> None:
    """The same query line or judgment twice changes nothing (decision: accepted, not refused)."""
    for name in ("queries.tsv", "qrels.txt"):
        lines = (tiny / name).read_text().splitlines(keepends=True)
        (tiny / name).write_text("".join([*lines, lines[0], lines[2]]))
    ds = resolve(str(tiny), tmp_path / "cache")
    assert ds.queries() == QUERIES and list(ds.queries()) == list(QUERIES) and ds.qrels() == QRELS


@pytest.mark.parametrize("file", ["queries.tsv", "qrels.txt", "docs.tsv"])
def test_a_byte_order_mark_is_skipped(file: str, tiny_dataset: Path, tmp_path: Path) -> None:
    """Excel and Notepad save UTF-8 with a BOM; ir_datasets read it as part of the first id, so the first query (and
    its pairs), the first judgment or the first passage silently matched nothing. Every pair is the same with it."""
    from precompute.pairs import build_pairs

    folder = edited(tiny_dataset, tmp_path, file, lambda text: "\ufeff" + text)
    assert (folder / file).read_bytes().startswith(b"\xef\xbb\xbf")
    plain, marked = (resolve(str(f), tmp_path / "cache") for f in (tiny_dataset, folder))
    assert marked.queries() == plain.queries() and marked.qrels() == plain.qrels()
    docids = [line.split("\t")[0] for line in (tiny_dataset / "docs.tsv").read_text().splitlines()]
    assert marked.docs(docids) == plain.docs(docids) and len(plain.docs(docids)) == len(docids)
    assert build_pairs(marked, easy_negatives=3) == build_pairs(plain, easy_negatives=3)
