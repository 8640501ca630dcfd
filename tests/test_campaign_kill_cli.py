"""A `backprop multi-run` process SIGKILLed (or Ctrl-C'd) in the middle of run 2 resumes (`backprop resume`)
from run 2's last step checkpoint, not from the run's start, and ends bit-identical to an uninterrupted
campaign: the same merged adapter tensors, losses and forgetting matrix."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backpropagate import runs
from process_helpers import BACKPROP, wait_for
from support.faults import slow_checkpoints_env

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "BACKPROPAGATE_TRAINING__SAVE_STEPS": "1"}


def _args(data: Path, model: Path, out: Path) -> list[str]:
    return ["multi-run", "--data", str(data), "--model", str(model), "--output", str(out), "--runs", "3",
            "--samples", "20", "--steps", "4", "--eval-fraction", "0.2", "--lora-r", "4", "--lora-alpha", "8",
            "--batch-size", "2", "--gradient-accumulation", "1", "--max-seq-length", "96", "--lr", "5e-3",
            "--seed", "3", "--report-to", "none"]


@pytest.fixture(scope="module")
def reference(tiny_llama: Path, identity_rows: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted campaign's output folder."""
    out = tmp_path_factory.mktemp("reference")
    done = subprocess.run([BACKPROP, *_args(identity_rows, tiny_llama, out)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _resume_and_compare(run_id: str, out: Path, reference: Path) -> str:
    """Finish the campaign with `backprop resume`; it must continue run 2 from a step checkpoint and end equal."""
    done = subprocess.run([BACKPROP, "resume", run_id[:8], "--output", str(out)], env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "from_run=2" in done.stderr
    found = re.search(r"checkpoint=(\S+) from_step=(\d+)", done.stderr)  # the log's keys are sorted
    assert found and "run-0002" in found.group(1) and int(found.group(2)) >= 1, done.stderr[-3000:]
    want, got = load_file(reference / "lora" / "adapter_model.safetensors"), \
        load_file(out / "lora" / "adapter_model.safetensors")
    assert want.keys() == got.keys() and want
    for key in want:
        assert torch.equal(want[key], got[key]), key
    ref_row = runs.list(reference)[0]
    row = runs.get(run_id, out)
    assert row.status == "completed" and row.loss_history == ref_row.loss_history
    assert row.details["forgetting"]["accuracy"] == ref_row.details["forgetting"]["accuracy"]
    assert row.details["forgetting"]["loss"] == ref_row.details["forgetting"]["loss"]
    return found.group(2)


def test_campaign_sigkilled_in_run_2_resumes_from_its_step_checkpoint(
        tiny_llama: Path, identity_rows: Path, tmp_path: Path, reference: Path) -> None:
    data = identity_rows
    out = tmp_path / "out"
    crash = subprocess.Popen([BACKPROP, *_args(data, tiny_llama, out)], env=slow_checkpoints_env(0.05, ENV),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_id = wait_for(lambda: next((r.run_id for r in runs.list(out)), None), "its history row", crash)
    run_2 = out / "checkpoints" / run_id / "run-0002"
    wait_for(lambda: (run_2 / "step-000002" / "manifest.json").is_file(), "run 2's step-2 checkpoint", crash)
    crash.send_signal(signal.SIGKILL)
    assert crash.wait(timeout=30) == -signal.SIGKILL
    assert runs.get(run_id, out).status == "interrupted"
    assert not (out / "multi_run" / run_id / "run-2").exists()  # run 2 never finished

    assert int(_resume_and_compare(run_id, out, reference)) >= 2


def test_ctrl_c_stops_a_campaign_in_run_2_with_a_checkpoint_and_resume_finishes_it(
        tiny_llama: Path, identity_rows: Path, tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen([BACKPROP, *_args(identity_rows, tiny_llama, out)],
                            env=slow_checkpoints_env(0.05, ENV), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    wait_for(lambda: any(out.glob("checkpoints/*/run-0002/step-000001/manifest.json")), "run 2's first checkpoint",
             proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    found = re.search(r"run (\w+) interrupted \(after step (\d+), checkpoint written\)", stderr)
    assert found and "Traceback" not in stderr, stderr[-3000:]
    run_id, step = found.group(1), int(found.group(2))
    assert 5 <= step < 8 and runs.get(run_id, out).status == "interrupted"  # inside run 2 (steps 5-8)
    assert int(_resume_and_compare(run_id, out, reference)) == step - 4
