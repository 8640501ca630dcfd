"""A `backprop train` with held-out evaluation SIGKILLed after an evaluation resumes (`backprop resume`) to
the same eval curve, best step, before/after answers and adapters as a run never interrupted; a resume that
asks for another hold-out is refused."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backpropagate import BackpropagateError, Trainer, runs
from backpropagate.demo import quickstart_path
from process_helpers import BACKPROP, wait_for
from support.faults import faults, slow_checkpoints_env

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DATA = str(quickstart_path())


def _args(model: Path, out: Path) -> list[str]:
    return ["train", "--data", DATA, "--model", str(model), "--output", str(out), "--steps", "8",
            "--eval-fraction", "0.25", "--eval-steps", "2", "--save-steps", "4", "--sample-prompt", "What is Python?",
            "--lora-r", "4", "--lora-alpha", "8", "--batch-size", "2", "--gradient-accumulation", "1",
            "--max-seq-length", "64", "--lr", "5e-3", "--seed", "3", "--report-to", "none"]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def test_sigkill_after_an_evaluation_resumes_to_the_same_curve_and_adapters(tiny_llama: Path,
                                                                            tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    done = subprocess.run([BACKPROP, *_args(tiny_llama, reference)], env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    # Each checkpoint file is followed by a pause, so the process is still at step 4 when it is killed.
    crash = subprocess.Popen([BACKPROP, *_args(tiny_llama, out)], env=slow_checkpoints_env(2, ENV),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_id = wait_for(lambda: next((r.run_id for r in runs.list(out)), None), "its history row", crash)
    step_4 = out / "checkpoints" / run_id / "step-000004" / "manifest.json"
    wait_for(step_4.is_file, "the step-4 checkpoint (after the evaluations at steps 2 and 4)", crash, timeout=600)
    crash.send_signal(signal.SIGKILL)
    assert crash.wait(timeout=30) == -signal.SIGKILL
    assert runs.get(run_id, out).status in ("running", "interrupted") and not (out / "lora").exists()

    resumed = subprocess.run([BACKPROP, "resume", run_id[:8], "--output", str(out)], env=ENV,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "from_step=4" in resumed.stderr
    want, got = runs.list(reference)[0].details, runs.get(run_id, out).details
    assert got["eval_history"] == want["eval_history"] and [s for s, _ in got["eval_history"]] == [2, 4, 6, 8]
    assert (got["best_step"], got["best_eval_loss"]) == (want["best_step"], want["best_eval_loss"])
    assert got["sample_answers"] == want["sample_answers"]  # the prompt came back from the run's own config
    assert [e["step"] for e in got["sample_answers"][0]["evaluations"]] == [2, 4, 6, 8]
    for folder in ("lora", "lora-best"):
        a, b = _weights(reference / folder), _weights(out / folder)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), folder


def test_resume_with_another_hold_out_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    settings = {"lora_r": 4, "lora_alpha": 8, "batch_size": 2, "gradient_accumulation": 1, "max_seq_length": 64,
                "report_to": "none", "eval_steps": 2, "save_steps": 2}
    out = tmp_path / "out"

    def boom(where: str, step: int, index: object) -> None:
        if (where, step) == ("micro_batch", 3):
            raise KeyboardInterrupt

    from backpropagate import RunInterrupted

    with faults(boom), pytest.raises(RunInterrupted):
        Trainer(str(tiny_llama), output_dir=out, **settings).train(DATA, steps=4, eval_fraction=0.25)
    with pytest.raises(BackpropagateError) as info:
        Trainer(str(tiny_llama), output_dir=out, **settings).train(resume=True, eval_fraction=0.5)
    assert info.value.code == "INPUT_RESUME_MISMATCH" and "eval_fraction (0.25 -> 0.5)" in info.value.message
    run = Trainer(str(tiny_llama), output_dir=out, **settings).train(resume=True)  # the run's own hold-out
    assert [s for s, _ in run.eval_history] == [2, 4]
    assert not list((out / "checkpoints" / run.run_id).glob("best-weights-step-*"))  # saved as lora-best: gone


def test_best_weight_files_are_pruned_while_the_run_goes_on(tiny_llama: Path, tmp_path: Path) -> None:
    """Only the best weights that the state or a kept checkpoint names stay on disk during the run."""
    from backpropagate import TrainingCallback

    seen: list[tuple[int, list[str]]] = []
    out = tmp_path / "out"
    trainer = Trainer(str(tiny_llama), output_dir=out, lora_r=4, lora_alpha=8, batch_size=2, gradient_accumulation=1,
                      max_seq_length=64, report_to="none", eval_steps=1, save_steps=2, keep_checkpoints=1,
                      learning_rate=0.05, warmup_ratio=0.0, lr_scheduler="constant")

    def on_step(metrics: dict) -> None:
        run_dirs = list((out / "checkpoints").glob("*"))
        names = sorted(p.name for d in run_dirs for p in d.glob("best-weights-step-*"))
        seen.append((metrics["step"], names))

    run = trainer.train(DATA, steps=8, eval_fraction=0.25, callback=TrainingCallback(on_log=on_step))
    assert run.best_step is not None and len(seen) == 8
    losses = [v for _, v in run.eval_history]
    assert sum(v < min(losses[:i], default=float("inf")) for i, v in enumerate(losses)) >= 3  # 3+ best files made
    assert max(len(names) for _, names in seen) <= 2  # the current best, and the one the kept checkpoint names
