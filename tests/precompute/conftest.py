"""Fixtures for the precompute tests: a tiny dataset folder in the tiny models' vocabulary, and finished runs."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from tests.tiny_models import WORDS, build


def make_dataset(root: Path, n_queries: int = 6, n_docs: int = 60, seed: int = 0) -> Path:
    """A dataset folder (layout of ../shared/data/trec-dl-2020) whose texts use the tiny models' vocabulary."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    text = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    (root / "queries.tsv").write_text("".join(f"{100 + q}\t{text(rng.randint(2, 6))}\n" for q in range(n_queries)))
    (root / "docs.tsv").write_text("".join(f"{1000 + d}\t{text(rng.randint(5, 40))}\n" for d in range(n_docs)))
    lines = [f"{100 + q} 0 {1000 + d} {rng.choice([0, 0, 1, 2, 3])}\n" for q in range(n_queries) for d in rng.sample(range(n_docs), 8)]
    (root / "qrels.txt").write_text("".join(lines))
    (root / "runs").mkdir()
    (root / "runs" / "first.trec").write_text(
        "".join(f"{100 + q} Q0 {1000 + d} {d + 1} {60.0 - d} first\n" for q in range(n_queries) for d in range(12))
    )
    return root


def refused(dataset: Path, model: Path, tmp_path: Path, capture, *extra: str, out: Path | None = None) -> str:
    """Run the CLI; assert exit 2, exactly one line on stderr (``error: ...``; no usage block, no traceback, no load
    report), and that no pass started (no manifest, no table, no part). Returns the error line.

    ``capture``: capsys or capfd (capfd also sees what libraries write to the file descriptor)."""
    from precompute.cli import main

    capture.readouterr()
    out = out or tmp_path / "out"
    argv = ["--dataset", str(dataset), "--model", str(model), "--out", str(out), "--cache", str(tmp_path / "cache"),
            "--no-progress", "--easy-negatives", "3", *extra]
    try:
        code = main(argv)
    except SystemExit as exit_:  # the CLI's own flag errors
        code = exit_.code
    err = [line for line in capture.readouterr().err.splitlines()  # less ir_datasets' log and doc-store bar
           if line.strip() and not line.startswith(("[INFO]", "docs_iter"))]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    assert not (out / "manifest.json").exists() and not list(out.rglob("*.parquet")), "work started before the check"
    return err[0]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "tiny-dl")


def run_tiny_job(kind: str, dataset: Path, tmp_path_factory, **overrides):
    """(config, run folder) of a finished job of a tiny random ``kind`` model over the first 3 queries of ``dataset``
    (about 35 pairs in 3 chunks: every stage still sees several chunks and several queries)."""
    from precompute.config import JobConfig
    from precompute.job import run

    model = build(kind, tmp_path_factory.mktemp(kind))
    settings = dict(dataset=str(dataset), model=str(model), out=tmp_path_factory.mktemp("run") / "store",
                    cache=tmp_path_factory.mktemp("cache"), easy_negatives=3, max_queries=3, batch_size=4, chunk_size=16,
                    progress=False)
    cfg = JobConfig(**{**settings, **overrides})
    return cfg, run(cfg)


@pytest.fixture(scope="session")
def tiny_bert_run(tiny_dataset, tmp_path_factory):
    """Every stage: summaries, spectra, contrasts, the default ablations plus components and QK subspaces, and the
    tfc1 patching experiment (what docs/store.md's example queries read)."""
    return run_tiny_job("bert", tiny_dataset, tmp_path_factory, ablations=("directions", "groups", "components", "subspace"),
                        subspace_heads="0.0,1.1", subspace_k="1", patching=("tfc1",))


@pytest.fixture(scope="session")
def small_runs(tiny_dataset, tmp_path_factory):
    """(config(out, *layers), fresh run, the fresh run after adding the groups at layer 1): one query, chunks of 4
    pairs, the groups ablations; small enough to kill and rerun at every crash point."""
    from precompute.config import JobConfig
    from precompute.job import run
    from tests.precompute.crashing import single_thread

    model = build("bert", tmp_path_factory.mktemp("small-model"))
    base = tmp_path_factory.mktemp("small")

    def config(out: Path, *layers: str) -> JobConfig:
        return JobConfig(dataset=str(tiny_dataset), model=str(model), out=out, cache=base / "cache", easy_negatives=2,
                         max_queries=1, batch_size=4, chunk_size=4, progress=False, ablations=("groups",),
                         ablation_layers=layers or ("all",))

    with single_thread():
        fresh = run(config(base / "fresh"))
        added = base / "added"
        shutil.copytree(fresh, added)
        run(config(added, "all", "1"))
    return config, fresh, added
