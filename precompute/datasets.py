"""Resolve a ``--dataset`` spec into a lazy handle on queries, judgments, passages and runs.

A spec is an alias (``dl19``, ``dl20``), a local folder laid out like ``../shared/data/trec-dl-2020``
(``queries.tsv``, ``docs.tsv``, ``qrels.txt``, optional ``runs/*.trec``), or any ir_datasets id with
queries, docs and qrels. Everything is read through ir_datasets so local folders and registry datasets
parse identically. Naming a dataset loads nothing: files are read on first use and kept in the object.

The job never writes into a dataset folder (it may be read-only): the passage lookup of a local folder
is built in a cache folder of the job's own, not beside ``docs.tsv`` where ir_datasets would put it.
"""

from __future__ import annotations

import codecs
import hashlib
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from precompute.console import first_line

# Without network ir_datasets retries each mirror with a 15 s timeout; fail fast instead.
# Must be set before ir_datasets reads them (it reads them when a download starts).
os.environ.setdefault("IR_DATASETS_DL_TRIES", "1")
os.environ.setdefault("IR_DATASETS_DL_TIMEOUT", "5")

ALIASES: dict[str, str] = {
    "dl19": "msmarco-passage/trec-dl-2019/judged",
    "dl20": "msmarco-passage/trec-dl-2020/judged",
}
# Local copies of the aliased datasets, suggested when the registry cannot be reached.
LOCAL_FOLDERS: dict[str, str] = {
    "dl19": "../shared/data/trec-dl-2019",
    "dl20": "../shared/data/trec-dl-2020",
}
FOLDER_FILES: tuple[str, ...] = ("queries.tsv", "docs.tsv", "qrels.txt")
FOLDER_FILE_OF = {"queries": "queries.tsv", "docs": "docs.tsv", "qrels": "qrels.txt"}
FOLDER_HINT = "a local folder with queries.tsv, docs.tsv, qrels.txt and optional runs/*.trec"

Run = dict[str, list[tuple[str, int, float]]]


class DatasetError(Exception):
    """A problem with the user's --dataset or --candidates, worded as one line for the CLI."""


@dataclass
class Dataset:
    """One resolved dataset; every accessor reads on first use and caches the result."""

    spec: str
    name: str
    source: str
    handle: Any = field(repr=False)
    """The ir_datasets dataset object everything is read through."""
    doc_store_path: Path | None = field(default=None, repr=False)
    """Where a local folder's passage lookup is built; None for registry datasets (ir_datasets' own cache)."""
    runs_dir: Path | None = field(default=None, repr=False)
    _runs: dict[str, Run] = field(default_factory=dict, init=False, repr=False)

    def queries(self) -> dict[str, str]:
        """qid -> text, in dataset order (callers rely on it for a stable pair order)."""
        return self._queries

    def qrels(self) -> dict[str, dict[str, int]]:
        """qid -> docid -> grade."""
        return self._qrels

    def docs(self, docids: Iterable[str]) -> dict[str, str]:
        """docid -> text for the requested ids that exist; missing ids are simply absent so callers can count them."""
        wanted = sorted(set(docids))
        if not wanted:
            return {}
        with self._reading("docs"):
            found = self._doc_store().get_many(wanted)
        return {docid: _text(doc) for docid, doc in found.items()}

    def run_names(self) -> list[str]:
        """Names of the candidate runs shipped with a local folder (file stems of runs/*.trec)."""
        if self.runs_dir is None or not self.runs_dir.is_dir():
            return []
        return sorted(p.stem for p in self.runs_dir.glob("*.trec"))

    def run(self, name: str) -> Run:
        """qid -> [(docid, rank, score)] by rank, for one run of runs/*.trec (:func:`read_run`)."""
        if name not in self._runs:
            names = self.run_names()
            if name not in names:
                available = ", ".join(names) if names else f"none (runs come only with {FOLDER_HINT})"
                raise DatasetError(f"dataset {self.spec} has no run {name!r}; available runs: {available}")
            self._runs[name] = read_run(self.runs_dir / f"{name}.trec")
        return self._runs[name]

    def has_scoreddocs(self) -> bool:
        """Whether the dataset ships a first-stage ranking (ir_datasets' scoreddocs: the official BM25 top-1000 of
        TREC DL); local folders name their runs instead (runs/*.trec)."""
        return self.doc_store_path is None and self.handle.has_scoreddocs()

    def scoreddocs(self) -> Run:
        """The dataset's own first-stage ranking (ir_datasets ``scoreddocs_iter``), ranked as :func:`read_run` ranks."""
        if not self.has_scoreddocs():
            hint = "name a run of the folder (run:NAME) or a run file (run:PATH)" if self.doc_store_path is not None \
                else "pass a run file with --candidates run:PATH"
            raise DatasetError(f"dataset {self.spec} has no scoreddocs (a first-stage ranking of its own); {hint}")
        if "scoreddocs" not in self._runs:
            with self._reading("scoreddocs"):
                self._runs["scoreddocs"] = ranked(self.handle.scoreddocs_iter())
        return self._runs["scoreddocs"]

    def where(self, what: str, key: Any) -> str:
        """Where a record of ``what`` (queries: key qid; qrels: key (qid, docid)) is, for an error message:
        ``path:line`` of its first line in a local folder, else the dataset's name."""
        lines = self._lines_of(what, key)
        return f"{Path(self.source) / FOLDER_FILE_OF[what]}:{lines[0][0]}" if lines else f"dataset {self.spec}"

    def _lines_of(self, what: str, key: Any) -> list[tuple[int, str]]:
        """(line number, line) of every line of a local folder's file whose record has ``key`` ([] for registry
        datasets). Read only to word an error: ir_datasets skips blank lines, so record and line numbers differ."""
        if self.doc_store_path is None:
            return []
        found = []
        with (Path(self.source) / FOLDER_FILE_OF[what]).open(encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip() and _record_key(what, line) == key:
                    found.append((lineno, line))
        return found

    def _given_twice(self, what: str, key: Any, thing: str, value: str, advice: str) -> DatasetError:
        """The error for a record given twice with two different ``value``s (text, grade): in a local folder it
        names the two lines, else the dataset."""
        lines = self._lines_of(what, key)
        if not lines:
            return DatasetError(f"dataset {self.spec}: {thing} is given twice with different {value}s; {advice}")
        first = _record_value(what, lines[0][1])
        second = next((n for n, line in lines if _record_value(what, line) != first), lines[-1][0])
        return DatasetError(f"{Path(self.source) / FOLDER_FILE_OF[what]}:{second}: {thing} was already given on line "
                            f"{lines[0][0]} with another {value}; {advice}")

    @cached_property
    def _queries(self) -> dict[str, str]:
        """Identical repeated lines are one query; a query id given twice with two texts is refused (ir_datasets
        would keep the last text, so one query's pairs would be scored with another query's text)."""
        queries: dict[str, str] = {}
        with self._reading("queries"):
            for q in self.handle.queries_iter():
                if queries.setdefault(q.query_id, _text(q)) != _text(q):
                    raise self._given_twice("queries", q.query_id, f"query id {q.query_id}", "text",
                                            "each query must appear once (remove or renumber one of the two lines)")
        return queries

    @cached_property
    def _qrels(self) -> dict[str, dict[str, int]]:
        """Identical repeated judgments count once; two grades for one (query, passage) are refused, and so is a
        grade the store cannot keep (pairs.grade's integer type)."""
        low, high = _grade_range()
        qrels: dict[str, dict[str, int]] = {}
        with self._reading("qrels"):
            for qrel in self.handle.qrels_iter():
                key, grade = (qrel.query_id, qrel.doc_id), int(qrel.relevance)
                if not low <= grade <= high:
                    raise DatasetError(f"{self.where('qrels', key)}: grade {grade} (query {key[0]}, passage {key[1]}) is "
                                       f"outside {low}..{high}, the grades the store keeps; use the collection's "
                                       "grades (0-3 for TREC DL)")
                if qrels.setdefault(qrel.query_id, {}).setdefault(qrel.doc_id, grade) != grade:
                    raise self._given_twice("qrels", key, f"the judgment of query {key[0]}, passage {key[1]}", "grade",
                                            "a pair is judged once (remove one of the two lines)")
        return qrels

    def _doc_store(self) -> Any:
        """ir_datasets' docstore for registry ids; for folders the same kind of store, but in our cache.

        Not cached: the folder store holds memory maps whose __del__ fails at interpreter exit, so it is
        dropped after each lookup (rebuilding the object is free; the files are built once).
        """
        if self.doc_store_path is None:
            return self.handle.docs_store()
        from ir_datasets.indices import PickleLz4FullStore

        docs_tsv = Path(self.source) / "docs.tsv"
        return PickleLz4FullStore(
            path=str(self.doc_store_path),
            init_iter_fn=lambda: _unique_docs(self.handle.docs_iter(), docs_tsv),
            data_cls=self.handle.docs_cls(),
            lookup_field="doc_id",
            index_fields=["doc_id"],
        )

    @contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        """Turn ir_datasets' download and parse failures into one-line DatasetErrors."""
        try:
            yield
        except DatasetError:
            raise
        except (OSError, RuntimeError, ValueError) as e:
            raise DatasetError(self._read_error(what, e)) from e

    def _read_error(self, what: str, error: Exception) -> str:
        if self.doc_store_path is not None:
            located = _first_bad_line(Path(self.source) / FOLDER_FILE_OF[what], what)
            if located is not None:
                return located
            return f"could not read the {what} of dataset folder {self.source}: {first_line(error)}"
        if _is_download_error(error):
            folder = LOCAL_FOLDERS.get(self.name, "PATH/TO/FOLDER")
            return (
                f"dataset {self.spec} could not be downloaded (no network?); "
                f"pass a local folder instead: --dataset {folder}"
            )
        return f"could not read the {what} of dataset {self.spec} ({self.source}): {first_line(error)}"


def resolve(spec: str, cache_root: Path) -> Dataset:
    """Alias, then existing folder, then ir_datasets id; anything else is a DatasetError saying what is accepted."""
    if spec in ALIASES:
        return _registry(spec, ALIASES[spec], name=spec)
    path = Path(spec).expanduser()
    if path.exists():
        return _folder(spec, path, cache_root)
    if _in_registry(spec):
        alias = {v: k for k, v in ALIASES.items()}.get(spec)
        return _registry(spec, spec, name=alias or spec.replace("/", "-"))
    if spec.startswith((".", "/", "~")):
        raise DatasetError(f"dataset folder {spec} does not exist; expected {FOLDER_HINT}")
    raise DatasetError(
        f"unknown dataset {spec!r}: expected an alias ({', '.join(ALIASES)}), {FOLDER_HINT} "
        f"(e.g. {LOCAL_FOLDERS['dl20']}), or an ir_datasets id with queries, docs and qrels"
    )


def _registry(spec: str, dataset_id: str, name: str) -> Dataset:
    """A registry dataset: ir_datasets.load is cheap (no download) so it is safe to do here."""
    import ir_datasets

    handle = ir_datasets.load(dataset_id)
    lacking = [part for part in ("queries", "docs", "qrels") if not getattr(handle, f"has_{part}")()]
    if lacking:
        raise DatasetError(
            f"ir_datasets id {dataset_id} has no {' or '.join(lacking)}; "
            f"expected a dataset with queries, docs and qrels (e.g. {ALIASES['dl20']})"
        )
    return Dataset(spec=spec, name=name, source=dataset_id, handle=handle)


def _folder(spec: str, path: Path, cache_root: Path) -> Dataset:
    """A local folder, read through ir_datasets' TSV/TREC readers without ever writing beside the files."""
    folder = path.resolve()
    if not folder.is_dir():
        raise DatasetError(f"dataset {spec} is a file; expected {FOLDER_HINT}")
    missing = [f for f in FOLDER_FILES if not (folder / f).is_file()]
    if missing:
        raise DatasetError(f"dataset folder {folder} lacks {', '.join(missing)}; expected {FOLDER_HINT}")
    return Dataset(
        spec=spec,
        name=folder.name,
        source=str(folder),
        handle=_folder_handle(folder),
        doc_store_path=Path(cache_root) / folder.name / f"docs-{_fingerprint(folder / 'docs.tsv')}.pklz4",
        runs_dir=folder / "runs",
    )


def _folder_handle(folder: Path) -> Any:
    """What ir_datasets.create_dataset builds, but with mkdir=False so nothing is created in the folder, and with
    a UTF-8 byte-order mark (Excel and Notepad write one) skipped: ir_datasets would read it as part of the first
    id, so the first query or judgment would silently match nothing."""
    from ir_datasets.datasets.base import Dataset as IrDataset
    from ir_datasets.formats import TrecQrels, TsvDocs, TsvQueries
    from ir_datasets.util import LocalDownload

    class WithoutBom(LocalDownload):
        @contextmanager
        def stream(self):
            with super().stream() as f:
                if f.read(len(codecs.BOM_UTF8)) != codecs.BOM_UTF8:
                    f.seek(0)
                yield f

    return IrDataset(
        TsvDocs(WithoutBom(folder / "docs.tsv", mkdir=False)),
        TsvQueries(WithoutBom(folder / "queries.tsv", mkdir=False)),
        TrecQrels(WithoutBom(folder / "qrels.txt", mkdir=False), {}),
    )


def _fingerprint(path: Path) -> str:
    """Short key of a file's identity, so two folders of the same name, or an edited docs.tsv, never share a store."""
    stat = path.stat()
    return hashlib.sha1(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def _in_registry(dataset_id: str) -> bool:
    import ir_datasets

    try:
        ir_datasets.load(dataset_id)
    except KeyError:
        return False
    return True


def read_run(path: Path) -> Run:
    """A TREC run file (``qid Q0 docid rank score tag``; gzipped when its name ends in .gz), read with ir_measures'
    reader and ranked by :func:`ranked`. A line the reader rejects is named by file and line."""
    import gzip

    import ir_measures

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig") as f:
            return ranked(ir_measures.read_trec_run(f))
    except OSError as err:
        raise DatasetError(f"run file {path} cannot be read ({err.strerror or type(err).__name__}); pass an existing "
                           "TREC run file") from err
    except (ValueError, UnicodeDecodeError) as err:
        raise DatasetError(_bad_run_line(path, opener) or f"{path}: not a TREC run file ({first_line(err)})") from err


def ranked(scored: Iterable[Any]) -> Run:
    """qid -> [(docid, rank, score)] of scored documents (ir_measures' ScoredDoc, ir_datasets' scoreddocs), each
    query's ranked as trec_eval and ir_measures rank a run: by score, high first, ties by docid, high first. The rank
    column of a run file is not read (trec_eval ignores it too), so a file and the same ranking from any other source
    give the same candidates."""
    by_query: dict[str, list[tuple[float, str]]] = {}
    for doc in scored:
        by_query.setdefault(doc.query_id, []).append((float(doc.score), doc.doc_id))
    return {qid: [(docid, rank, score) for rank, (score, docid) in enumerate(sorted(entries, reverse=True), 1)]
            for qid, entries in by_query.items()}


def _bad_run_line(path: Path, opener) -> str | None:
    """``path:line: ...`` for the first line that is not ``qid Q0 docid rank score tag``, read only to word an error."""
    with opener(path, "rt", encoding="utf-8-sig", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            cols = line.split()
            if not cols:
                continue
            try:
                if len(cols) != 6:
                    raise ValueError
                float(cols[4])
            except ValueError:
                return f"{path}:{lineno}: expected a TREC run line 'qid Q0 docid rank score tag', got {line.strip()!r}"
    return None


def _first_bad_line(path: Path, what: str) -> str | None:
    """``path:line: what is wrong`` for the first line ir_datasets' reader rejects, so a parse error names the file
    and line (ir_datasets says only "expected 2 fields, got 1"). Read only when reading failed."""
    try:
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                problem = _line_problem(raw, what)
                if problem:
                    return f"{path}:{lineno}: {problem}"
    except OSError:
        return None
    return None


def _line_problem(raw: bytes, what: str) -> str | None:
    try:
        line = raw.removeprefix(codecs.BOM_UTF8).decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not UTF-8 text (byte {raw[err.start]:#x} at column {err.start + 1}); save the file as UTF-8"
    if line in ("\n", ""):
        return None
    if what == "qrels":
        cols = line.split()
        if len(cols) != 4:
            return f"expected a qrels line 'qid iteration docid grade' (4 columns), got {len(cols)}: {line.strip()!r}"
        try:
            int(cols[3])
        except ValueError:
            return f"the grade {cols[3]!r} is not an integer: {line.strip()!r}"
        return None
    cols = line.rstrip("\n").split("\t")
    if len(cols) != 2:
        return (f"expected 'id<TAB>text' (2 tab-separated fields), got {len(cols)}: {line.strip()[:80]!r}"
                + ("; tabs inside a text must be replaced by spaces" if len(cols) > 2 else ""))
    return None


def _unique_docs(docs: Iterable[Any], path: Path) -> Iterator[Any]:
    """The passages, refusing a docid given twice (ir_datasets would silently keep the last text).

    Memory stays small on collections of millions of passages: one 64-bit hash per passage; the duplicates'
    lines are found by a second pass over the file, only when a hash repeats.
    """
    import numpy as np

    hashes = []
    for doc in docs:
        hashes.append(hash(doc.doc_id))
        yield doc
    values = np.sort(np.asarray(hashes, dtype=np.int64))
    repeated = set(values[1:][values[1:] == values[:-1]].tolist())
    if repeated:
        _raise_duplicate(path, repeated)


def _raise_duplicate(path: Path, repeated: set[int]) -> None:
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8-sig") as f:
        lineno = 0
        for lineno, line in enumerate(f, 1):
            docid = line.split("\t", 1)[0]
            if hash(docid) not in repeated or line == "\n":
                continue
            if docid in seen:
                raise DatasetError(f"{path}:{lineno}: docid {docid} was already given on line {seen[docid]}; each passage "
                                   "must appear once (remove one of the two lines)")
            seen[docid] = lineno


def _text(record: Any) -> str:
    """The text of an ir_datasets query or doc, whatever its class (GenericDoc, MS MARCO, TREC topics...)."""
    return record.default_text() if hasattr(record, "default_text") else record.text


def _record_key(what: str, line: str) -> Any:
    """The key of one line of a folder's file: a query's id, a judgment's (qid, docid)."""
    if what == "qrels":
        cols = line.split()
        return (cols[0], cols[2]) if len(cols) == 4 else None
    return line.split("\t", 1)[0]


def _record_value(what: str, line: str) -> Any:
    """What one line says about its key: a judgment's grade, a query's text."""
    return int(line.split()[3]) if what == "qrels" else line.rstrip("\n").partition("\t")[2]


def _grade_range() -> tuple[int, int]:
    """The grades the store keeps: the range of pairs.grade's integer type (int8: -128..127)."""
    import numpy as np

    from precompute.store.schema import PAIRS

    grade = next(c for c in PAIRS.columns if c.name == "grade")
    info = np.iinfo(grade.type.to_pandas_dtype())
    return int(info.min), int(info.max)


def _is_download_error(error: Exception) -> bool:
    if isinstance(error, RuntimeError):
        return bool(error.args) and error.args[0] == "All download sources failed"
    return isinstance(error, OSError) and not isinstance(error, FileNotFoundError)


