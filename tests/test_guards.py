"""OOM recovery and the thermal guard on a real tiny model.

A CPU cannot run out of GPU memory and has no GPU thermometer, so faults are injected: the hook raises
the real ``torch.cuda.OutOfMemoryError`` (or the generic RuntimeError some back-ends raise), and the
temperature source is a plain function. Everything else (loop, checkpoints, history) is real.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backpropagate import BackpropagateError, RunControls, Trainer, TrainingCallback, runs
from backpropagate.config import resolve_settings
from backpropagate.demo import quickstart_path
from backpropagate.training.checkpoints import list_checkpoints, run_checkpoint_dir, verify_checkpoint
from backpropagate.training.guards import ThermalGuard, is_oom, nvml_reader, smaller_micro_batch
from support.faults import faults

DATA = str(quickstart_path())
NO_DROPOUT = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "max_seq_length": 64}
SMALL = {"lora_r": 4, "lora_alpha": 8, "batch_size": 2, "gradient_accumulation": 2, "max_seq_length": 64}


def oom_at(*steps: int, error: type[BaseException] = torch.cuda.OutOfMemoryError):
    """A fault hook raising an OOM at the first micro-batch of each given step, once per step."""
    pending = set(steps)
    calls: list[tuple[int, int]] = []

    def hook(where: str, step: int, index: object) -> None:
        if where != "micro_batch":
            return
        calls.append((step, index))
        if step in pending and index == 0:
            pending.discard(step)
            raise error("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.6 GiB total capacity)")

    hook.calls = calls  # type: ignore[attr-defined]
    return hook


def test_micro_batch_shrinks_by_divisors_so_rows_per_step_stay_equal() -> None:
    assert [smaller_micro_batch(b) for b in (1, 2, 3, 4, 5, 6, 8)] == [None, 1, 1, 2, 1, 3, 4]
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_oom(RuntimeError("CUDA error: out of memory")) and not is_oom(RuntimeError("shape mismatch"))


def test_oom_at_steps_3_and_5_halves_twice_and_matches_the_small_batch_run(
        tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[tuple[int, int, int]] = []
    cb = TrainingCallback(on_log=lambda m: seen.append((m["step"], m["batch_size"], m["gradient_accumulation"])))
    hook = oom_at(3, 5)
    with faults(hook):
        run = Trainer(str(tiny_llama), output_dir=tmp_path / "oom", batch_size=4, gradient_accumulation=1,
                      **NO_DROPOUT).train(DATA, steps=6, callback=cb)
    logs = capsys.readouterr().err

    assert run.steps == 6 and len(run.loss_history) == 6
    assert seen == [(1, 4, 1), (2, 4, 1), (3, 2, 2), (4, 2, 2), (5, 1, 4), (6, 1, 4)]
    assert all(b * ga == 4 for _, b, ga in seen)  # the effective batch never changed
    halvings = [line for line in logs.splitlines() if "oom_batch_halved" in line]
    assert len(halvings) == 2 and all(f"run_id={run.run_id}" in line for line in halvings)
    assert "step=3" in halvings[0] and "step=5" in halvings[1]
    # The failed attempt of step 3 was redone from its first micro-batch, not continued.
    assert hook.calls.count((3, 0)) == 2 and hook.calls.count((5, 0)) == 2

    small = Trainer(str(tiny_llama), output_dir=tmp_path / "small", batch_size=1, gradient_accumulation=4,
                    **NO_DROPOUT).train(DATA, steps=6)
    torch.testing.assert_close(run.loss_history, small.loss_history, rtol=1e-5, atol=1e-5)
    got = load_file(tmp_path / "oom" / "lora" / "adapter_model.safetensors")
    want = load_file(tmp_path / "small" / "lora" / "adapter_model.safetensors")
    assert got.keys() == want.keys()
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)


def test_oom_recovery_off_fails_on_the_first_oom(tiny_llama: Path, tmp_path: Path) -> None:
    trainer = Trainer(str(tiny_llama), output_dir=tmp_path, oom_recovery=False, save_steps=1, **SMALL)
    with faults(oom_at(2, error=RuntimeError)), pytest.raises(BackpropagateError) as info:
        trainer.train(DATA, steps=3)
    assert info.value.code == "RUNTIME_GPU_OOM" and "step 2" in info.value.message
    record = runs.list(tmp_path)[0]
    assert record.status == "failed" and record.error_code == "RUNTIME_GPU_OOM" and record.completed_steps == 1


def test_oom_at_one_row_is_retried_three_times_then_exhausted(tiny_llama: Path, tmp_path: Path) -> None:
    calls = []

    def always(where: str, step: int, index: object) -> None:
        if where == "micro_batch" and step == 2:
            calls.append(index)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")

    trainer = Trainer(str(tiny_llama), output_dir=tmp_path, save_steps=1, **SMALL)
    with faults(always), pytest.raises(BackpropagateError) as info:
        trainer.train(DATA, steps=3)
    assert info.value.code == "RUNTIME_OOM_RECOVERY_EXHAUSTED"
    assert len(calls) == 1 + 1 + 3  # batch 2, then batch 1, then 3 retries at batch 1
    record = runs.list(tmp_path)[0]
    assert record.error_code == "RUNTIME_OOM_RECOVERY_EXHAUSTED"
    verify_checkpoint(run_checkpoint_dir(tmp_path, record.run_id) / "step-000001")  # resumable from here


class FakeSensor:
    """Temperatures read in order; the last one repeats."""

    def __init__(self, *temperatures: float) -> None:
        self.temperatures = list(temperatures)
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.temperatures.pop(0) if len(self.temperatures) > 1 else self.temperatures[0]


def guard(sensor: FakeSensor, sleeps: list[float]) -> ThermalGuard:
    return ThermalGuard(sensor, pause_at=85, resume_below=75, critical_at=95, poll_seconds=30,
                        sleep=sleeps.append, clock=lambda: 30.0 * len(sleeps))


def test_hot_gpu_checkpoints_pauses_until_cool_then_continues_unchanged(
        tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sleeps: list[float] = []
    events: list[str] = []
    sensor = FakeSensor(60, 88, 86, 80, 74, 60)  # after step 2: hot; three polls until below 75
    cb = TrainingCallback(on_step=lambda s, loss: events.append(f"step {s}"),
                          on_save=lambda path: events.append(f"save {Path(path).name}"))
    run = Trainer(str(tiny_llama), output_dir=tmp_path / "hot", save_steps=0, **SMALL).train(
        DATA, steps=4, callback=cb, controls=RunControls(temperature=guard(sensor, sleeps)))
    logs = capsys.readouterr().err
    assert sleeps == [30, 30, 30]
    assert events[:4] == ["step 1", "step 2", "save step-000002", "step 3"]  # checkpoint before the pause
    assert "thermal_pause" in logs and "thermal_resume" in logs and "paused_seconds=90" in logs
    assert run.steps == 4
    cool = Trainer(str(tiny_llama), output_dir=tmp_path / "cool", save_steps=0, **SMALL).train(DATA, steps=4)
    assert run.loss_history == cool.loss_history  # pausing changes nothing about the result


def test_emergency_temperature_checkpoints_and_stops_then_resumes(tiny_llama: Path, tmp_path: Path) -> None:
    sleeps: list[float] = []
    trainer = Trainer(str(tiny_llama), output_dir=tmp_path, save_steps=0, **SMALL)
    with pytest.raises(BackpropagateError) as info:
        trainer.train(DATA, steps=5, controls=RunControls(temperature=guard(FakeSensor(60, 60, 97), sleeps)))
    assert info.value.code == "RUNTIME_GPU_TEMPERATURE_CRITICAL" and "97" in info.value.message
    assert sleeps == []
    record = runs.list(tmp_path)[0]
    assert record.status == "failed" and record.error_code == "RUNTIME_GPU_TEMPERATURE_CRITICAL"
    run_dir = run_checkpoint_dir(tmp_path, record.run_id)
    assert [c.step for c in list_checkpoints(run_dir)] == [3]
    verify_checkpoint(run_dir / "step-000003")
    # Cooling while paused is not enough if the GPU passes the emergency line during the pause.
    with pytest.raises(BackpropagateError) as info:
        guard(FakeSensor(90, 96), sleeps).check(7, on_hot=lambda: None)
    assert info.value.code == "RUNTIME_GPU_TEMPERATURE_CRITICAL" and sleeps == [30]

    resumed = Trainer.from_run(record.run_id, tmp_path).train(
        resume=record.run_id, controls=RunControls(temperature=guard(FakeSensor(50), sleeps)))
    assert resumed.steps == 5 and runs.get(record.run_id, tmp_path).status == "completed"


def test_thermal_guard_is_off_without_a_gpu_and_says_why() -> None:
    settings = resolve_settings().training
    off = ThermalGuard.from_settings(settings, torch.device("cpu"))
    assert not off.enabled and off.status == "off(training on the CPU)"
    reader, reason = nvml_reader(0)  # the real nvidia-ml-py: no NVIDIA driver on this machine
    if reader is None:
        assert "NVML" in reason or "nvidia-ml-py" in reason
    else:  # pragma: no cover - a machine with a GPU
        assert 0 < reader() < 130
    with pytest.raises(ValueError):
        ThermalGuard(None, pause_at=80, resume_below=85, critical_at=90)
    with pytest.raises(BackpropagateError) as info:
        Trainer(thermal_critical_celsius=80)
    assert info.value.code == "INPUT_INVALID_VALUE" and "thermal_critical_celsius" in info.value.message


def test_a_failing_sensor_turns_the_guard_off_not_the_run() -> None:
    def broken() -> float:
        raise OSError("sensor gone")

    g = ThermalGuard(broken)
    assert g.check(1, on_hot=lambda: pytest.fail("no checkpoint for a broken sensor")) == 0.0
    assert not g.enabled and "sensor failed" in g.status
