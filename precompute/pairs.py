"""Build the query-passage pairs the model will score: relevant, hard and easy negatives, or a run's candidates.

Judged mode pairs every judged query with its judged passages (relevant: grade >= 1, hard: grade 0) plus K
easy negatives, passages judged for other queries. Run mode takes a first-stage ranking's top-``depth`` candidates
instead, labelled by their judgment; the ranking comes from a candidate source (:func:`candidate_run`): a run of a
local dataset folder (``run:NAME``), any TREC run file (``run:PATH``) or a registry dataset's own (``scoreddocs``). Pair ids are deterministic so stores built twice join row for row, and a query's
easy negatives depend only on (seed, qid), never on --max-queries or --depth. Pairs whose passage text is
missing are counted in ``skipped``, never silently dropped.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from precompute.datasets import Dataset, DatasetError, read_run
from precompute.names import EASY_GRADE, UNJUDGED

JUDGED_TYPES: tuple[str, ...] = ("relevant", "hard", "easy")
RUN_TYPES: tuple[str, ...] = ("relevant", "hard", UNJUDGED, "easy")
RUN_PREFIX = "run:"
SCOREDDOCS = "scoreddocs"
CANDIDATES_EXPECTED = "run:NAME (runs/NAME.trec of the dataset folder), run:PATH (a TREC run file) or scoreddocs[:K]"


def is_candidate_source(text: str) -> bool:
    """Whether ``text`` is a candidate source as --candidates takes it (the source itself is looked up later)."""
    if text.startswith(RUN_PREFIX):
        return len(text) > len(RUN_PREFIX)
    source, colon, k = text.partition(":")
    return source == SCOREDDOCS and (not colon or (k.isdigit() and int(k) >= 1))


def split_depth(candidates: str | None) -> tuple[str | None, int | None]:
    """``scoreddocs:K`` -> (``scoreddocs``, K): K is the depth, written with the source as PyTerrier's ``% K``; any
    other source -> (itself, None)."""
    if candidates is not None and candidates.startswith(SCOREDDOCS + ":"):
        return SCOREDDOCS, int(candidates.partition(":")[2])
    return candidates, None


def run_path(ds: Dataset, candidates: str) -> Path | None:
    """The file of ``run:PATH`` (None for ``run:NAME`` of the folder's runs and for scoreddocs): a name of the
    dataset folder's runs/ wins over a file of that name."""
    if not candidates.startswith(RUN_PREFIX):
        return None
    name = candidates[len(RUN_PREFIX):]
    return None if name in ds.run_names() else Path(name).expanduser()


def candidates_identity(ds: Dataset, candidates: str | None) -> str | None:
    """The candidate source as the run identity records it: ``run:PATH`` with the file's absolute path (a run file
    names the same ranking from any working directory), anything else as given."""
    path = None if candidates is None else run_path(ds, candidates)
    return candidates if path is None else f"{RUN_PREFIX}{path.resolve()}"


@dataclass(frozen=True, slots=True)  # slots: no per-pair __dict__ (the job holds every pair for its whole run)
class Pair:
    pair_id: int
    qid: str
    docid: str
    query: str
    doc: str
    grade: int
    neg_type: str
    run_rank: int | None = None
    run_score: float | None = None


@dataclass
class PairSet:
    pairs: list[Pair]
    skipped: dict[str, int]
    """neg_type -> pairs dropped because the passage text is missing or empty (every type of the mode, 0 included)."""
    queries: list[str]
    """The qids used, in order (a query whose pairs were all skipped is still listed)."""

    def counts(self) -> dict[str, int]:
        """neg_type -> number of pairs kept, with the same keys as ``skipped``."""
        counts = dict.fromkeys(self.skipped, 0)
        for pair in self.pairs:
            counts[pair.neg_type] = counts.get(pair.neg_type, 0) + 1
        return counts


@dataclass(frozen=True)
class _Candidate:
    """A pair of one query before its text is known and its id assigned."""

    docid: str
    grade: int
    neg_type: str
    run_rank: int | None = None
    run_score: float | None = None


def build_pairs(
    ds: Dataset,
    *,
    easy_negatives: int = 20,
    seed: int = 0,
    candidates: str | None = None,
    depth: int = 100,
    max_queries: int | None = None,
    progress: bool = False,
) -> PairSet:
    """All pairs of the first ``max_queries`` judged queries, in pair_id order; see the module docstring.

    ``candidates`` is None (judged mode) or a candidate source (module docstring). ``progress`` shows a
    bar over the queries on stderr; ir_datasets reports its own doc-store build.
    """
    run = _parse_candidates(ds, candidates)
    qrels = ds.qrels()
    queries = ds.queries()
    qids = _judged_queries(ds, max_queries)
    found = {
        qid: _judged_candidates(qrels[qid]) if run is None else _run_candidates(qrels[qid], run.get(qid, []), depth)
        for qid in qids
    }
    pool = sorted({docid for judged in qrels.values() for docid in judged})
    texts = ds.docs([*pool, *(c.docid for cands in found.values() for c in cands)])
    pool = [docid for docid in pool if _has_text(texts.get(docid))]

    pairs: list[Pair] = []
    skipped = dict.fromkeys(JUDGED_TYPES if run is None else RUN_TYPES, 0)
    for qid in _progress(qids, progress):
        exclude = set(qrels[qid]) | {docid for docid, _, _ in (run or {}).get(qid, [])}
        for cand in [*found[qid], *_easy(qid, pool, exclude, easy_negatives, seed)]:
            text = texts.get(cand.docid)
            if not _has_text(text):
                skipped[cand.neg_type] += 1
                continue
            pairs.append(Pair(len(pairs), qid, cand.docid, queries[qid], text, cand.grade, cand.neg_type,
                              cand.run_rank, cand.run_score))
    return PairSet(pairs=pairs, skipped=skipped, queries=qids)


def _judged_queries(ds: Dataset, max_queries: int | None) -> list[str]:
    """qids that have judgments, in dataset order, truncated to ``max_queries``. A judged query with an empty text is
    refused, not left out: its judgments say it belongs to the evaluation, and dropping it would change every mean
    over queries without a word."""
    qrels = ds.qrels()
    empty = [qid for qid, text in ds.queries().items() if qrels.get(qid) and not text.strip()]
    if empty:
        more = f" ({len(empty)} judged queries have none)" if len(empty) > 1 else ""
        raise DatasetError(f"{ds.where('queries', empty[0])}: query {empty[0]} has an empty text but "
                           f"{len(qrels[empty[0]])} judgments{more}; give it its text, or remove its judgments")
    qids = [qid for qid in ds.queries() if qrels.get(qid)]
    if not qids:
        raise DatasetError(
            f"dataset {ds.spec} has no query with both a text and judgments; "
            f"check that its queries and qrels use the same query ids"
        )
    return qids if max_queries is None else qids[:max_queries]


def _parse_candidates(ds: Dataset, candidates: str | None) -> dict[str, list[tuple[str, int, float]]] | None:
    """None in judged mode, else the ranking of the candidate source (module docstring); DatasetError naming what
    is available when the source does not exist."""
    if candidates is None:
        return None
    if candidates == SCOREDDOCS:
        return ds.scoreddocs()
    path = run_path(ds, candidates) if is_candidate_source(candidates) else None
    if path is None and is_candidate_source(candidates):  # run:NAME of the folder's runs
        return ds.run(candidates[len(RUN_PREFIX):])
    if path is None or not path.is_file():
        names = ", ".join(ds.run_names()) or f"none for dataset {ds.spec}"
        what = f"{path} is not a file" if path is not None else f"expected {CANDIDATES_EXPECTED}"
        raise DatasetError(f"--candidates {candidates!r}: {what}; the dataset's runs: {names}"
                           + ("; it has scoreddocs" if ds.has_scoreddocs() else ""))
    return read_run(path)


def _judged_candidates(judged: dict[str, int]) -> list[_Candidate]:
    """Relevant then hard, each by docid."""
    cands = [_Candidate(docid, *_label(grade)) for docid, grade in judged.items()]
    return sorted(cands, key=lambda c: (JUDGED_TYPES.index(c.neg_type), c.docid))


def _run_candidates(judged: dict[str, int], ranked: list[tuple[str, int, float]], depth: int) -> list[_Candidate]:
    """The run's first ``depth`` distinct docids, in rank order, labelled by their judgment."""
    cands: list[_Candidate] = []
    seen: set[str] = set()
    for docid, rank, score in ranked:
        if len(cands) >= depth:
            break
        if docid not in seen:
            seen.add(docid)
            grade, neg_type = _label(judged[docid]) if docid in judged else (EASY_GRADE, UNJUDGED)
            cands.append(_Candidate(docid, grade, neg_type, rank, score))
    return cands


def _label(grade: int) -> tuple[int, str]:
    """(grade, neg_type) of a judged passage. Negative grades (non-relevant in some collections) become hard,
    grade 0, because the store reserves -1 for 'never judged'."""
    return (grade, "relevant") if grade >= 1 else (0, "hard")


def _easy(qid: str, pool: list[str], exclude: set[str], k: int, seed: int) -> list[_Candidate]:
    """K passages with text from other queries' judgments, seeded per query so they do not depend on which
    other queries are selected; sorted by docid for the pair order."""
    allowed = [docid for docid in pool if docid not in exclude]
    picked = random.Random(f"{seed}:{qid}").sample(allowed, min(k, len(allowed)))
    return [_Candidate(docid, EASY_GRADE, "easy") for docid in sorted(picked)]


def _has_text(text: str | None) -> bool:
    return bool(text and text.strip())


def _progress(qids: list[str], enabled: bool) -> Iterable[str]:
    """A tqdm bar over the queries when asked for; tqdm is imported only then."""
    if not enabled:
        return qids
    from tqdm import tqdm

    return tqdm(qids, desc="pairs", unit="query")
