"""``RunControls``: ``trainer.stop()`` from another thread leaves a resumable ``interrupted`` run that resumes
bit-identically, and ``temperature`` replaces NVML with any sensor (the thresholds come from the settings)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backpropagate import RunControls, RunInterrupted, Trainer, runs
from backpropagate.demo import quickstart_path
from backpropagate.training.checkpoints import list_checkpoints, run_checkpoint_dir
from support.faults import slow_checkpoints

DATA = str(quickstart_path())
SETTINGS = {"lora_r": 4, "lora_alpha": 8, "batch_size": 2, "gradient_accumulation": 2, "max_seq_length": 64,
            "report_to": "none"}


def _when(condition, timeout: float = 240) -> bool:
    """Wait for a state (not for a time): poll ``condition`` until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_stop_from_another_thread_leaves_a_resumable_run(tiny_llama: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    reference = Trainer(str(tiny_llama), output_dir=tmp_path / "ref", save_steps=1, **SETTINGS).train(DATA, steps=8)
    slow_checkpoints(monkeypatch, 0.1)  # checkpoint files are written slowly, so the stop lands mid-run
    out = tmp_path / "out"
    trainer = Trainer(str(tiny_llama), output_dir=out, save_steps=1, **SETTINGS)
    seen = threading.Event()

    def stopper() -> None:
        if _when(lambda: any(out.glob("checkpoints/*/step-000001/manifest.json"))):
            seen.set()
            trainer.stop("stopped from another thread")

    thread = threading.Thread(target=stopper, daemon=True)
    thread.start()
    with pytest.raises(RunInterrupted) as info:
        trainer.train(DATA, steps=8)
    thread.join(timeout=30)
    stopped = info.value
    assert seen.is_set() and stopped.step is not None and 1 <= stopped.step < 8
    record = runs.get(stopped.run_id, out)
    assert record.status == "interrupted" and record.completed_steps == stopped.step
    assert [c.step for c in list_checkpoints(run_checkpoint_dir(out, stopped.run_id))][-1] == stopped.step

    monkeypatch.undo()  # checkpoints at full speed again
    run = Trainer.from_run(stopped.run_id, out).train(resume=stopped.run_id)
    assert run.run_id == stopped.run_id and run.loss_history == reference.loss_history
    want, got = load_file(Path(reference.output_path) / "adapter_model.safetensors"), \
        load_file(Path(run.output_path) / "adapter_model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_temperature_is_any_sensor_with_the_settings_thresholds(
        tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reads: list[float] = []

    def sensor() -> float:
        reads.append(50.0)
        return 50.0

    Trainer(str(tiny_llama), output_dir=tmp_path, save_steps=0, thermal_pause_celsius=80,
            **SETTINGS).train(DATA, steps=2, controls=RunControls(temperature=sensor))
    logs = capsys.readouterr().err
    assert len(reads) == 2  # read after every step, on the CPU too
    assert "thermal_guard='on(RunControls.temperature, pause>=80C" in logs
