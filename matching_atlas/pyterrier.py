"""The atlas inside PyTerrier pipelines (``pip install 'matching-atlas[pyterrier]'``; no Java: only DataFrames).

``Atlas(model, out)`` is a reranker: given a result frame (``qid, query, docno, text``, optional ``label``) it runs
the job on exactly those pairs (a dataset folder written from the frame, the frame's ranking as its candidate run,
no easy negatives) into ``out/run`` and returns the frame with each pair's stored score. ``atlas.ablated(condition)``
reranks with one ablation condition of that run applied (its ``ablation_scores``), so::

    atlas = Atlas("castorini/monobert-large-msmarco", "runs/bm25", qrels=qrels, ablation_groups=("q_d", "d_q"))
    pt.Experiment([bm25 % 100 >> text >> atlas, bm25 % 100 >> text >> atlas.ablated("q_d@all/zero"), ...], topics,
                  qrels, eval_metrics=["nDCG@10"], baseline=0, test="t", correction="holm")

gives the numbers of the run's Table 1 (the report's ``run`` scope: the frame's pairs ranked by score). Judgments:
the ``qrels`` frame (``qid, docno, label``) when given, else the frame's ``label`` column; the atlas evaluates judged
queries only. :func:`write_trec_run` exports any condition's scores as a TREC run file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pandas as pd
import pyterrier as pt

RUN_NAME = "frame"  # the frame's ranking, as the dataset folder's runs/frame.trec
_NEEDED = ("qid", "query", "docno", "text")


class AtlasError(ValueError):
    """A frame or a condition the atlas cannot use (one line)."""


def _check(frame: pd.DataFrame, columns=_NEEDED) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise AtlasError(f"the atlas needs a result frame with columns {', '.join(columns)}; this one lacks "
                         f"{', '.join(missing)} (add a text loader before it: pt.text.get_text)")


def _clean(text: Any) -> str:
    """One TSV field: tabs and newlines would split the line."""
    return " ".join(str(text).split())


def write_dataset(frame: pd.DataFrame, qrels: pd.DataFrame | None, folder: Path) -> Path:
    """A local dataset folder (queries.tsv, docs.tsv, qrels.txt, runs/frame.trec) holding exactly ``frame``'s pairs
    and its ranking (by ``score`` when it has one, else by its order); the job reads it like any other folder."""
    _check(frame)
    if qrels is None:
        if "label" not in frame.columns:
            raise AtlasError("the atlas evaluates judged queries: give the frame a label column or pass qrels= "
                             "(qid, docno, label)")
        qrels = frame[["qid", "docno", "label"]]
    folder.mkdir(parents=True, exist_ok=True)
    queries = frame.drop_duplicates("qid")
    docs = frame.drop_duplicates("docno")
    (folder / "queries.tsv").write_text("".join(f"{q}\t{_clean(t)}\n" for q, t in zip(queries["qid"], queries["query"])))
    (folder / "docs.tsv").write_text("".join(f"{d}\t{_clean(t)}\n" for d, t in zip(docs.docno, docs.text)))
    (folder / "qrels.txt").write_text("".join(f"{q} 0 {d} {int(g)}\n"
                                              for q, d, g in zip(qrels.qid, qrels.docno, qrels.label)))
    ranked = frame.copy()
    if "score" not in ranked.columns:  # no first-stage score: the frame's order is its ranking
        ranked["score"] = -ranked.groupby("qid").cumcount().astype(float)
    (folder / "runs").mkdir(exist_ok=True)
    write_trec_run(ranked, folder / "runs" / f"{RUN_NAME}.trec", tag=RUN_NAME)
    return folder


def write_trec_run(frame: pd.DataFrame, path: Path, tag: str = "atlas") -> Path:
    """``frame`` (qid, docno, score) as a TREC run file, each query's documents ranked by score (ties by docno, as
    trec_eval ranks them)."""
    import ir_measures

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scored = (ir_measures.ScoredDoc(str(q), str(d), float(s)) for q, d, s in zip(frame.qid, frame.docno, frame.score))
    ranked = sorted(scored, key=lambda doc: (doc.query_id, -doc.score, tuple(-ord(c) for c in doc.doc_id)))
    rank: dict[str, int] = {}
    with path.open("w") as f:
        for doc in ranked:
            rank[doc.query_id] = rank.get(doc.query_id, 0) + 1
            f.write(f"{doc.query_id} Q0 {doc.doc_id} {rank[doc.query_id]} {doc.score!r} {tag}\n")
    return path


def _fingerprint(frame: pd.DataFrame) -> str:
    pairs = sorted(zip(frame.qid.astype(str), frame.docno.astype(str)))
    return hashlib.sha256(repr(pairs).encode()).hexdigest()[:16]


class Atlas(pt.Transformer):
    """The atlas as a reranker (module docstring); ``settings`` are JobConfig fields (ablation_groups, measures, ...)."""

    def __init__(self, model: str, out: str | Path, *, qrels: pd.DataFrame | None = None, **settings: Any):
        self.model, self.out, self.qrels, self.settings = model, Path(out), qrels, settings
        self._done: str | None = None  # fingerprint of the frame the run in out/run holds

    @property
    def run_folder(self) -> Path:
        return self.out / "run"

    def __repr__(self) -> str:
        return f"Atlas({self.model!r}, {str(self.out)!r})"

    def run(self, frame: pd.DataFrame) -> Path:
        """The run folder of ``frame``'s pairs, computed once (a frame with other pairs starts a new run folder)."""
        from precompute.config import JobConfig
        from precompute.job import run

        fingerprint = _fingerprint(frame)
        if self._done != fingerprint:
            dataset = write_dataset(frame, self.qrels, self.out / f"dataset-{fingerprint}")
            depth = int(frame.groupby("qid").size().max())
            self.out.mkdir(parents=True, exist_ok=True)
            cfg = JobConfig(**{"easy_negatives": 0, "progress": False, "cache": self.out / "cache", **self.settings,
                               "dataset": str(dataset), "model": self.model, "candidates": f"run:{RUN_NAME}",
                               "depth": depth, "out": self.out / f"run-{fingerprint}"})
            folder = run(cfg)
            link = self.run_folder
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(folder.resolve(), target_is_directory=True)
            self._done = fingerprint
        return self.run_folder

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        _check(frame)
        return _with_scores(frame, stored_scores(self.run(frame), None))

    def ablated(self, condition_id: str) -> "Ablated":
        """A reranker giving ``condition_id``'s scores (an id of the run's ablation_conditions, e.g. q_d@all/zero)."""
        return Ablated(self, condition_id)


class Ablated(pt.Transformer):
    """One ablation condition of an :class:`Atlas` run as a reranker (computes the run first when needed)."""

    def __init__(self, atlas: Atlas, condition_id: str):
        self.atlas, self.condition_id = atlas, condition_id

    def __repr__(self) -> str:
        return f"{self.atlas!r}.ablated({self.condition_id!r})"

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        _check(frame)
        return _with_scores(frame, stored_scores(self.atlas.run(frame), self.condition_id))


def stored_scores(run: Path, condition_id: str | None) -> pd.DataFrame:
    """(qid, docno, score) of a run folder, read through the reader (:func:`matching_atlas.open_run`: every file
    verified first): the stored scores (``condition_id`` None) or one ablation condition's."""
    import matching_atlas as ma
    from precompute.store.sql import literal

    opened = ma.open_run(run, progress=False)
    if condition_id is None:
        return opened.sql("SELECT qid, docid AS docno, score FROM pairs")
    scores = opened.sql("SELECT p.qid, p.docid AS docno, a.score FROM ablation_scores a JOIN pairs p USING (pair_id) "
                        f"WHERE a.condition_id = {literal(condition_id)}")
    if scores.empty:
        known = opened.conditions()["condition_id"].tolist()
        raise AtlasError(f"condition {condition_id!r} is not in run {run}; its conditions: {', '.join(known[:12])}")
    return scores


def _with_scores(frame: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its score replaced by the stored one, ranked (PyTerrier's rank column)."""
    out = frame.drop(columns=[c for c in ("score", "rank") if c in frame.columns])
    out = out.assign(qid=out.qid.astype(str), docno=out.docno.astype(str)).merge(scores, on=["qid", "docno"],
                                                                                  how="left")
    if out.score.isna().any():
        missing = out[out.score.isna()].iloc[0]
        raise AtlasError(f"pair (qid {missing.qid}, docno {missing.docno}) has no stored score: its text is empty "
                         "or its query is not judged")
    return pt.model.add_ranks(out)
