"""Peak memory of the job against the number of pairs: it must stay flat (parts on disk, streamed merges).

    python bench/memory.py [--pairs 1000,10000]

The local TREC DL folders hold top-100 runs only, so the bench writes synthetic dataset folders (the layout of
../shared/data: queries.tsv, docs.tsv, qrels.txt) with 10 judged passages per query and 5 easy negatives, and runs
the whole job on each (summaries, spectra, contrasts, the ablations of the built-in groups) with a small random BERT
(tests/tiny_models.py) in a child process. Prints the child's peak resident memory (ru_maxrss) per size and the
ratio of the largest to the smallest (target: within 10%).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def dataset(root: Path, pairs: int, seed: int = 0) -> Path:
    """A dataset folder with ``pairs`` judged pairs (10 per query) over a vocabulary the tiny model knows."""
    from tests.tiny_models import WORDS

    rng = random.Random(seed)
    text = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    queries, per_query = pairs // 10, 10
    docs = queries * per_query
    root.mkdir(parents=True)
    (root / "queries.tsv").write_text("".join(f"{q}\t{text(rng.randint(3, 8))}\n" for q in range(queries)))
    (root / "docs.tsv").write_text("".join(f"d{d}\t{text(rng.randint(40, 120))}\n" for d in range(docs)))
    (root / "qrels.txt").write_text("".join(f"{q} 0 d{q * per_query + i} {rng.choice([0, 1, 2, 3])}\n"
                                            for q in range(queries) for i in range(per_query)))
    return root


def peak_rss_mb(args: list[str]) -> tuple[float, float]:
    """(peak resident MB, seconds) of ``python -m precompute <args>`` in a child process."""
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "precompute", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the job failed: {child.stderr.read()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", default="1000,10000", help="comma-separated sizes. Default: %(default)s")
    args = p.parse_args()
    sizes = [int(n) for n in args.pairs.split(",")]

    from tests.tiny_models import build

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build("bert", root / "model", layers=4, heads=8, hidden=64)
        print(f"{'pairs':>8} {'peak RSS MB':>12} {'seconds':>8}   (whole job: summaries, spectra, contrasts, group "
              "ablations; random 4 x 8 BERT)", flush=True)
        peaks = []
        for n in sizes:
            data = dataset(root / f"data-{n}", n)
            peak, seconds = peak_rss_mb(["--dataset", str(data), "--model", str(model), "--out", str(root / f"run-{n}"),
                                         "--cache", str(root / "cache"), "--easy-negatives", "5", "--ablations", "groups",
                                         "--no-progress"])
            peaks.append(peak)
            print(f"{n:>8,} {peak:>12.0f} {seconds:>8.0f}", flush=True)
        print(f"largest / smallest peak: {max(peaks) / min(peaks):.3f} (target <= 1.10)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
