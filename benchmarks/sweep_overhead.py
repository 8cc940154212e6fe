"""What `evalsuite sweep` adds per cell (goal ≤ 1 s): scheduling, the done check and the record.

    python benchmarks/sweep_overhead.py [--cells 8]

Runs a local sweep of k-NN cells on the mini world whose features are already cached (after one
warm-up cell), so each cell is little more than its bookkeeping, and prints the seconds per cell of a
first pass (cells run) and of a second pass (every cell found done and skipped), and their ratio to
one cell evaluated directly (`evalsuite.runner.evaluate`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=8)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    os.environ.setdefault("EVALSUITE_FEATURE_CACHE", str(scratch / "features"))
    from evalsuite.cell import DataSpec, RunSettings
    from evalsuite.runner import evaluate
    from evalsuite.sweep import plan, run_sweep

    options = RunSettings(out=scratch / "runs")
    evaluate("mae-tiny", "imagenet", weights="random", data="mini", protocol="knn", out=scratch / "warm")  # features
    t0 = time.perf_counter()
    evaluate("mae-tiny", "imagenet", weights="random", data="mini", protocol="knn", out=scratch / "direct", seed=99)
    direct = time.perf_counter() - t0
    cells = plan(["mae-tiny"], ["imagenet"], ["knn"], seeds=args.cells, weights=["random"], data=DataSpec("mini"))
    t0 = time.perf_counter()
    run_sweep(cells, options)
    first = (time.perf_counter() - t0) / len(cells)
    t0 = time.perf_counter()
    run_sweep(cells, options)
    second = (time.perf_counter() - t0) / len(cells)
    print(f"one cell on cached features: {direct:.3f} s")
    print(f"sweep, cells run:     {first:.3f} s/cell  (overhead {first - direct:+.3f} s; ratio {first / direct:.2f})")
    print(f"sweep, cells skipped: {second:.3f} s/cell  (the done check alone)")


if __name__ == "__main__":
    main()
