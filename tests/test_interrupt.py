"""Stopping a run on request: ``trainer.stop()`` and Ctrl-C (SIGINT to the process group) stop after the
current step with a checkpoint, record the run ``interrupted``, say how to resume it, and the resumed run
ends bit-identical to one that was never stopped."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backpropagate import RunInterrupted, Trainer, TrainingCallback, runs
from backpropagate.demo import quickstart_path
from backpropagate.training.checkpoints import list_checkpoints, run_checkpoint_dir
from process_helpers import BACKPROP, wait_for
from support.faults import slow_checkpoints_env

SETTINGS = dict(lora_r=4, lora_alpha=8, batch_size=2, gradient_accumulation=2, max_seq_length=64, save_steps=0,
                report_to="none")
ARGS = ["--data", str(quickstart_path()), "--steps", "8", "--save-steps", "1", "--lora-r", "4",
        "--lora-alpha", "8", "--batch-size", "2", "--gradient-accumulation", "2", "--max-seq-length", "64",
        "--report-to", "none"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys() and want
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_trainer_stop_checkpoints_and_resumes_bit_identical(tiny_llama: Path, tmp_path: Path) -> None:
    data = str(quickstart_path())
    reference = Trainer(str(tiny_llama), output_dir=tmp_path / "ref", **SETTINGS).train(data, steps=6)
    trainer = Trainer(str(tiny_llama), output_dir=tmp_path / "out", **SETTINGS)  # save_steps=0: no periodic ones
    stop_at = 3

    def on_step(step: int, loss: float) -> None:
        if step == stop_at:
            trainer.stop("test")

    with pytest.raises(RunInterrupted) as info:
        trainer.train(data, steps=6, callback=TrainingCallback(on_step=on_step))
    stopped = info.value
    assert stopped.step == stop_at and isinstance(stopped, KeyboardInterrupt)
    assert f"backprop resume {stopped.run_id} --output" in stopped.message
    record = runs.get(stopped.run_id, tmp_path / "out")
    assert record.status == "interrupted" and record.completed_steps == stop_at
    assert [c.step for c in list_checkpoints(run_checkpoint_dir(tmp_path / "out", stopped.run_id))] == [stop_at]
    assert not (tmp_path / "out" / "lora").exists()  # an interrupted run saves no adapter

    run = Trainer.from_run(stopped.run_id, tmp_path / "out").train(resume=stopped.run_id)
    assert run.run_id == stopped.run_id and run.loss_history == reference.loss_history
    _assert_same(_adapter(Path(run.output_path)), _adapter(Path(reference.output_path)))


@pytest.mark.slow
def test_ctrl_c_prints_the_resume_command_and_resuming_is_bit_identical(tiny_llama: Path, tmp_path: Path) -> None:
    model = ["--model", str(tiny_llama)]
    reference = subprocess.Popen([BACKPROP, "train", *model, "--output", str(tmp_path / "ref"), *ARGS],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    out = tmp_path / "out"
    # Checkpoint files are written slowly (support.faults sleeps after each), so the signal lands mid-run.
    proc = subprocess.Popen([BACKPROP, "train", *model, "--output", str(out), *ARGS], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=slow_checkpoints_env(0.2, ENV),
                            start_new_session=True)
    wait_for(lambda: (out / "checkpoints").is_dir() and any((out / "checkpoints").rglob("step-000001*")),
             "the first checkpoint", proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "stopping after the current step" in stderr
    found = re.search(r"interrupted \(after step (\d+), checkpoint written\); resume with: (backprop resume .+)",
                      stderr)
    assert found, stderr[-3000:]
    step, command = int(found.group(1)), shlex.split(found.group(2))
    run_id = command[2]
    assert 1 <= step < 8 and runs.get(run_id, out).status == "interrupted"
    assert [c.step for c in list_checkpoints(run_checkpoint_dir(out, run_id))][-1] == step

    ref_out, ref_err = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_err[-3000:]
    resumed = subprocess.run([BACKPROP, *command[1:]], capture_output=True, text=True, timeout=300, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"run_id: {run_id}" in resumed.stdout and f"from_step={step}" in resumed.stderr
    _assert_same(_adapter(out / "lora"), _adapter(tmp_path / "ref" / "lora"))
    assert runs.get(run_id, out).status == "completed"
