"""Cold start of the CLI: median wall time of `backprop --help` against `python -c pass`.

Heavy libraries (torch, transformers, peft) must be imported lazily, so asking for help costs little
more than starting Python. Target: ratio <= 5.

    .venv/bin/python bench/cold_start.py [--runs 21]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def median_seconds(cmd: list[str], runs: int) -> float:
    subprocess.run(cmd, capture_output=True, check=True)  # warm the page cache and .pyc files
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    backprop = shutil.which("backprop") or str(Path(sys.executable).with_name("backprop"))
    baseline = median_seconds([sys.executable, "-c", "pass"], args.runs)
    cli = median_seconds([backprop, "--help"], args.runs)
    ratio = cli / baseline
    print(f"python -c pass   median {baseline * 1000:7.1f} ms")
    print(f"backprop --help  median {cli * 1000:7.1f} ms")
    print(f"ratio            {ratio:.2f}x (target <= 5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
