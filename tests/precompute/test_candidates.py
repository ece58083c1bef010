"""Candidate sources: a folder's run (run:NAME), any TREC run file (run:PATH) and a registry dataset's scoreddocs give
the same pairs for the same ranking; the source is part of the run identity."""

from __future__ import annotations

import itertools
import os
import random
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from precompute.config import JobConfig
from precompute.datasets import DatasetError, resolve
from precompute.pairs import build_pairs, candidates_identity
from tests.precompute.conftest import make_dataset

_REGISTERED = itertools.count()


def register(folder: Path, run: Path) -> str:
    """An ir_datasets registry dataset of ``folder``'s files with ``run`` as its scoreddocs, as ir_datasets declares
    msmarco-passage/trec-dl-2020/judged (TSV docs and queries, TREC qrels and scoreddocs); no network."""
    import ir_datasets
    from ir_datasets.datasets.base import Dataset
    from ir_datasets.formats import TrecQrels, TrecScoredDocs, TsvDocs, TsvQueries
    from ir_datasets.util import LocalDownload

    files = folder.parent / f"{folder.name}-registry"
    shutil.copytree(folder, files)
    name = f"atlas-test/registry-{os.getpid()}-{next(_REGISTERED)}"
    ir_datasets.registry.register(name, Dataset(
        TsvDocs(LocalDownload(files / "docs.tsv")), TsvQueries(LocalDownload(files / "queries.tsv")),
        TrecQrels(LocalDownload(files / "qrels.txt"), {}), TrecScoredDocs(LocalDownload(run))))
    return name


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """(folder, a copy of its run elsewhere with lines shuffled and the rank column garbled, registry id)."""
    folder = make_dataset(tmp_path_factory.mktemp("cand") / "tiny-dl")
    lines = (folder / "runs" / "first.trec").read_text().splitlines()
    random.Random(0).shuffle(lines)
    elsewhere = tmp_path_factory.mktemp("runs") / "first-shuffled.trec"
    elsewhere.write_text("".join(" ".join([*line.split()[:3], "7", *line.split()[4:]]) + "\n" for line in lines))
    return folder, elsewhere, register(folder, elsewhere)


def test_run_name_run_path_and_scoreddocs_give_the_same_pairs(sources, tmp_path):
    folder, elsewhere, registry = sources
    ds_folder, ds_registry = resolve(str(folder), tmp_path / "cache"), resolve(registry, tmp_path / "cache")
    assert ds_registry.has_scoreddocs() and not ds_folder.has_scoreddocs()
    kw = dict(easy_negatives=2, depth=5, max_queries=4)
    by_name = build_pairs(ds_folder, candidates="run:first", **kw)
    assert len(by_name.pairs) > 4 * 5 and {p.neg_type for p in by_name.pairs} >= {"unjudged", "easy"}
    assert build_pairs(ds_folder, candidates=f"run:{elsewhere}", **kw) == by_name
    assert build_pairs(ds_registry, candidates="scoreddocs", **kw) == by_name
    ranks = [p.run_rank for p in by_name.pairs if p.qid == by_name.queries[0] and p.run_rank is not None]
    assert ranks == [1, 2, 3, 4, 5]  # ranked by score (the garbled rank column is not read)


def test_scoreddocs_k_is_the_depth_and_the_source_is_in_the_identity(sources, tmp_path, monkeypatch):
    folder, elsewhere, registry = sources
    cfg = JobConfig(candidates="scoreddocs:7")
    assert (cfg.candidates, cfg.depth) == ("scoreddocs", 7)
    with pytest.raises(ValueError, match="gives the depth 7 but --depth gives 9"):
        JobConfig(candidates="scoreddocs:7", depth=9)
    ds = resolve(str(folder), tmp_path / "cache")
    monkeypatch.chdir(elsewhere.parent)
    assert candidates_identity(ds, f"run:{elsewhere.name}") == f"run:{elsewhere}"  # a file: its absolute path
    assert candidates_identity(ds, "run:first") == "run:first"  # a run of the folder: as given (older stores)
    assert candidates_identity(ds, "scoreddocs") == "scoreddocs"


def test_a_missing_or_malformed_run_file_is_one_line(sources, tmp_path):
    folder, _, _ = sources
    ds = resolve(str(folder), tmp_path / "cache")
    with pytest.raises(DatasetError, match=r"nowhere\.trec is not a file; the dataset's runs: first"):
        build_pairs(ds, candidates=f"run:{tmp_path / 'nowhere.trec'}")
    bad = tmp_path / "bad.trec"
    bad.write_text("1 Q0 d 1 2.0 x\n1 Q0 d 1 high x\n")
    with pytest.raises(DatasetError, match=r"bad\.trec:2: expected a TREC run line"):
        build_pairs(ds, candidates=f"run:{bad}")


def test_jobs_over_a_folder_run_and_a_registry_scoreddocs_store_the_same_pairs(sources, tmp_path):
    """Two jobs (summary stage only): the folder with run:NAME and the registry dataset with scoreddocs."""
    from precompute.job import run
    from tests.tiny_models import build

    folder, _, registry = sources
    model = build("bert", tmp_path / "model")
    common = dict(model=str(model), cache=tmp_path / "cache", easy_negatives=1, depth=3, max_queries=2, batch_size=8,
                  progress=False, stages=("summaries",))
    stored = []
    for dataset, candidates in ((str(folder), "run:first"), (registry, "scoreddocs")):
        out = run(JobConfig(dataset=dataset, candidates=candidates, out=tmp_path / candidates.replace(":", "-"), **common))
        stored.append(pq.read_table(out / "pairs.parquet").to_pylist())
    assert stored[0] == stored[1] and len(stored[0]) == 2 * 4
