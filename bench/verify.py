"""What opening a large run costs, every file verified first (matching_atlas/verification.py).

    python bench/verify.py --rows 1e7                 # generate (or reuse) the bench/app.py run, then time
    python bench/verify.py --rows 3e8 --dir /data/x   # ~30 GiB of files

On the run bench/app.py generates (checksummed files with the run's identity, as the job writes them), times:

* footer checks only (what listing a run costs before its files are verified);
* the first verification of every table file, nothing cached, with 1 thread and with ``--threads`` (row groups
  verified in parallel), per table: rows, MB and seconds;
* the same run opened again in the same server process (outcomes in memory) and after a restart (outcomes read
  back from the cache folder, their MACs checked).

The files are in the OS page cache or not as the machine left them (nothing is dropped: other processes share the
machine); the load average is printed before and after. Prints what it measured, nothing else.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.app import generate  # noqa: E402


def load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("ATLAS_BENCH_DIR", "/tmp/atlas-bench")))
    ap.add_argument("--rows", type=lambda v: int(float(v)), default=10_000_000, help="head_attention rows")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--serial", action="store_true", help="also time the first verification with one thread")
    args = ap.parse_args(argv)

    run = generate(args.dir, rows=args.rows, layers=12, heads=12, queries=2000, threads=args.threads)
    from matching_atlas import opening as runs, verification

    print(f"\n{run}; {os.cpu_count()} cores; {load()}")
    with tempfile.TemporaryDirectory(prefix="atlas-verify-bench-") as cache:
        os.environ[verification.CACHE_ENV] = cache
        info, footers = timed(lambda: runs.inspect_run(run, verify_below=0))
        assert info.ok, info.problem
        print(f"footer checks of {len(info.checks)} files (listing, nothing verified yet): {footers:.2f} s")
        for threads in ([1] if args.serial else []) + [args.threads]:
            verification.THREADS = threads
            verification._CACHES.clear()
            for entry in Path(cache).glob("*.entry"):
                entry.unlink()
            print(f"\nfirst verification, {threads} thread(s):")
            print(f"  {'table':<24} {'rows':>13} {'MB':>8} {'s':>8} {'rows/s':>12}")
            total_rows = total_s = 0.0
            for check in info.checks:
                problem, seconds = timed(lambda: verification.verify_file(check))
                assert problem is None, problem
                mb = check.size() / 1e6
                print(f"  {check.table:<24} {check.footer_rows:>13,} {mb:>8.0f} {seconds:>8.2f} "
                      f"{check.footer_rows / max(seconds, 1e-9):>12,.0f}")
                total_rows += check.footer_rows
                total_s += seconds
            ha = next(c for c in info.checks if c.table == "head_attention")
            print(f"  all files: {total_rows:,.0f} rows in {total_s:.1f} s ({load()})")
            print(f"  per 10^7 head_attention rows, the whole run: {total_s / ha.footer_rows * 1e7:.2f} s")
        again, memory = timed(lambda: runs.inspect_run(run))
        assert again.verified
        verification._CACHES.clear()
        restarted, disk = timed(lambda: runs.inspect_run(run))
        assert restarted.verified
        print(f"\nopened again, same process (outcomes in memory): {memory * 1000:.1f} ms")
        print(f"opened after a restart (outcomes from the cache folder): {disk * 1000:.1f} ms")
    print(load())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
