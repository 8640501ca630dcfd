"""Cold start of the CLI: median wall time of `backprop --help` and `backprop train --help` against
`python -c pass`, measured in one run (ratios: the machine's speed cancels out).

Asking for help reads typer and the generated option catalog only (no pydantic-settings, structlog, rich,
torch: tests/test_cli_imports.py), so it costs little more than starting Python. Target: each <= 8x.

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
    print(f"{'python -c pass':<24} median {baseline * 1000:7.1f} ms")
    worst = 0.0
    for words in (["--help"], ["train", "--help"]):
        seconds = median_seconds([backprop, *words], args.runs)
        worst = max(worst, seconds / baseline)
        print(f"{'backprop ' + ' '.join(words):<24} median {seconds * 1000:7.1f} ms  "
              f"ratio {seconds / baseline:.2f}x (target <= 8x)")
    return 0 if worst <= 8 else 1


if __name__ == "__main__":
    sys.exit(main())
