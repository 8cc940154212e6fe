"""How fast the CLI answers what needs no model (goal ≤ 2 s each on 2 cores):

    python benchmarks/cli_latency.py [--repeat 3]

Times, in fresh processes, a backbone typo (refused from the registry index: no torch), a bad
``-p`` (the task's protocol table is imported), ``list backbones`` and ``show nyuv2``, and prints
each command's best wall time and its ratio to the 2-second goal.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

COMMANDS = {
    "typo refusal": ["run", "-b", "pixio-h61", "-t", "nyuv2"],
    "bad -p refusal": ["run", "-b", "pixio-tiny", "-t", "nyuv2", "-p", "epochz=3"],
    "list backbones": ["list", "backbones"],
    "show nyuv2": ["show", "nyuv2"],
}
GOAL_S = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for name, argv in COMMANDS.items():
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "evalsuite", *argv], capture_output=True)
            times.append(time.perf_counter() - t0)
        best = min(times)
        print(f"{name:>16}: {best:5.2f} s  ({best / GOAL_S:.2f} × the {GOAL_S:.0f} s goal)")


if __name__ == "__main__":
    main()
