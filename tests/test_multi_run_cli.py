"""`backprop multi-run` through the real CLI: a campaign SIGKILLed in run 2 and finished by `backprop resume`
ends bit-identical to an uninterrupted one; bad input prints a coded error without a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backpropagate import runs
from process_helpers import BACKPROP, wait_for

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # both campaigns must use the same thread count to be bit-equal


def _args(data: Path, model: Path, out: Path) -> list[str]:
    return ["multi-run", "--data", str(data), "--model", str(model), "--output", str(out), "--runs", "3",
            "--samples", "20", "--steps", "3", "--eval-fraction", "0.2", "--lora-r", "4", "--lora-alpha", "8",
            "--batch-size", "2", "--gradient-accumulation", "1", "--max-seq-length", "96", "--lr", "5e-3",
            "--seed", "3"]


def test_sigkilled_campaign_resumes_bit_identical(tiny_llama: Path, identity_rows: Path, tmp_path: Path) -> None:
    data = identity_rows
    reference = subprocess.Popen([BACKPROP, *_args(data, tiny_llama, tmp_path / "ref")], env=ENV,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = tmp_path / "out"
    crash = subprocess.Popen([BACKPROP, *_args(data, tiny_llama, out)], env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    run_id = wait_for(lambda: next((r.run_id for r in runs.list(out)), None), "its history row", crash)
    wait_for(lambda: (out / "multi_run" / run_id / "run-1").is_dir()
          and (out / "checkpoints" / run_id / "after-run-0001").is_dir(), "the end of run 1", crash)
    crash.send_signal(signal.SIGKILL)
    assert crash.wait(timeout=30) == -signal.SIGKILL
    assert runs.get(run_id, out).status == "interrupted"
    assert not (out / "multi_run" / run_id / "run-3").exists()

    stdout, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, stdout[-3000:]
    assert "Forgetting report" in stdout and "AA" in stdout and "BWT" in stdout and "merged adapter:" in stdout
    assert stdout.count("Forgetting report") == 1  # the table once (stdout); the log has a one-line summary

    done = subprocess.run([BACKPROP, "resume", run_id[:8], "--output", str(out)], env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"run_id: {run_id}" in done.stdout and "from_run=2" in done.stderr
    want, got = load_file(tmp_path / "ref" / "lora" / "adapter_model.safetensors"), \
        load_file(out / "lora" / "adapter_model.safetensors")
    assert want.keys() == got.keys() and want
    for key in want:
        assert torch.equal(want[key], got[key]), key
    record = runs.get(run_id, out)
    assert record.status == "completed" and len(record.details["forgetting"]["accuracy"]) == 3


def test_bad_input_prints_a_coded_error(tiny_llama: Path, identity_rows: Path, tmp_path: Path) -> None:
    args = _args(identity_rows, tiny_llama, tmp_path)
    args[args.index("--runs") + 1] = "0"
    done = subprocess.run([BACKPROP, *args], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.startswith("[INPUT_INVALID_VALUE]: num_runs=0")
    assert "Traceback" not in done.stderr
    done = subprocess.run([BACKPROP, "multi-run", "--resume", "feedbeef", "--output", str(tmp_path)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.startswith("[STATE_RUN_NOT_FOUND]:"), done.stderr
