"""A clean CPU run prints no other library's warning: ours are structlog lines, theirs would say Warning."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from backpropagate.demo import quickstart_path
from process_helpers import BACKPROP

pytestmark = pytest.mark.slow

FOREIGN_WARNING = re.compile(r"Warning|WARNING")  # warnings.warn's "FutureWarning:", logging's "WARNING:"


def _foreign(text: str) -> list[str]:
    return [line for line in text.splitlines() if FOREIGN_WARNING.search(line)]


def test_backprop_train_prints_no_foreign_warning(tiny_llama: Path, tmp_path: Path) -> None:
    done = subprocess.run([BACKPROP, "train", "--model", str(tiny_llama), "--data", str(quickstart_path()),
                           "--steps", "2", "--lora-r", "4", "--max-seq-length", "64", "--output", str(tmp_path),
                           "--report-to", "none"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run_completed" in done.stderr
    assert not _foreign(done.stdout + done.stderr)


def test_the_python_quick_start_prints_no_foreign_warning(tiny_llama: Path, tmp_path: Path) -> None:
    script = (f"from backpropagate import Trainer\n"
              f"trainer = Trainer({str(tiny_llama)!r}, lora_r=4, max_seq_length=64, output_dir={str(tmp_path)!r},"
              f" report_to='none')\n"
              f"trainer.train({str(quickstart_path())!r}, steps=2)\n"
              f"trainer.save()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run_completed" in done.stderr
    assert not _foreign(done.stdout + done.stderr)
