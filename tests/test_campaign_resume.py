"""Campaign runs are ordinary runs: each writes step checkpoints, so a campaign crashed or stopped in the
middle of run 2 resumes from run 2's last step checkpoint (not from its start) and ends bit-identical to a
campaign that was never interrupted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backpropagate import RunControls, RunInterrupted, Trainer, TrainingCallback, runs
from backpropagate.training.checkpoints import list_checkpoints
from process_helpers import Crash
from support.faults import faults

ARGS = {"lora_r": 4, "lora_alpha": 8, "batch_size": 2, "gradient_accumulation": 1, "max_seq_length": 96,
        "learning_rate": 5e-3, "seed": 3, "report_to": "none"}
CAMPAIGN = {"num_runs": 3, "steps_per_run": 4, "samples_per_run": 20, "eval_fraction": 0.2}


@pytest.fixture(scope="module")
def reference(tiny_llama: Path, identity_rows: Path, tmp_path_factory: pytest.TempPathFactory):
    """The uninterrupted campaign, without periodic checkpoints (save_steps only changes how it is looked after)."""
    out = tmp_path_factory.mktemp("reference")
    return Trainer(str(tiny_llama), output_dir=out, save_steps=0, **ARGS).multi_run(identity_rows, **CAMPAIGN)


def _assert_same_campaign(result, reference) -> None:
    want, got = load_file(Path(reference.output_path) / "adapter_model.safetensors"), \
        load_file(Path(result.output_path) / "adapter_model.safetensors")
    assert got.keys() == want.keys() and want
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert result.loss_histories == reference.loss_histories
    assert result.report.accuracy == reference.report.accuracy and result.report.loss == reference.report.loss


def test_campaign_crashed_mid_run_2_resumes_from_its_step_checkpoint(
        tiny_llama: Path, identity_rows: Path, tmp_path: Path, reference, capsys: pytest.CaptureFixture[str]) -> None:
    current = {"run": 0}

    def crash_in_run_2_step_3(where: str, step: int, detail: object) -> None:
        if where == "run_start":
            current["run"] = step
        elif where == "micro_batch" and current["run"] == 2 and step == 3:
            raise Crash

    out = tmp_path / "out"
    with faults(crash_in_run_2_step_3), pytest.raises(Crash):
        Trainer(str(tiny_llama), output_dir=out, save_steps=1, **ARGS).multi_run(identity_rows, **CAMPAIGN)
    (crashed,) = runs.list(out)
    assert crashed.status == "interrupted" and crashed.completed_steps == 4 + 2
    run_dir = out / "checkpoints" / crashed.run_id / "run-0002"
    assert [c.step for c in list_checkpoints(run_dir)][-1] == 2
    capsys.readouterr()

    result = Trainer(str(tiny_llama), output_dir=out, save_steps=1, **ARGS).multi_run(
        resume=crashed.run_id, **CAMPAIGN)
    logs = capsys.readouterr().err
    assert "from_run=2" in logs and "from_step=2" in logs and "run-0002" in logs
    assert result.run_id == crashed.run_id and runs.get(crashed.run_id, out).status == "completed"
    _assert_same_campaign(result, reference)
    assert not run_dir.exists()  # once run 2 is merged, the campaign checkpoint replaces its step checkpoints


def test_trainer_stop_in_run_2_leaves_an_interrupted_campaign_that_resumes(
        tiny_llama: Path, identity_rows: Path, tmp_path: Path, reference) -> None:
    out = tmp_path / "out"
    trainer = Trainer(str(tiny_llama), output_dir=out, save_steps=0, **ARGS)

    def on_step(step: int, loss: float) -> None:  # campaign-wide step numbers: run 2's step 1 is step 5
        if step == 5:
            trainer.stop("test")

    with pytest.raises(RunInterrupted) as info:
        trainer.multi_run(identity_rows, callback=TrainingCallback(on_step=on_step), **CAMPAIGN)
    stopped = info.value
    assert stopped.step == 5 and f"backprop resume {stopped.run_id}" in stopped.message
    record = runs.get(stopped.run_id, out)
    assert record.status == "interrupted" and record.completed_steps == 5
    # save_steps=0 writes no periodic checkpoint: the stop wrote this one
    assert [c.step for c in list_checkpoints(out / "checkpoints" / stopped.run_id / "run-0002")] == [1]

    result = Trainer.from_run(stopped.run_id, out).multi_run(resume=stopped.run_id)
    _assert_same_campaign(result, reference)


def test_a_hot_gpu_in_a_campaign_run_checkpoints_before_the_pause(
        tiny_llama: Path, identity_rows: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from backpropagate.training.guards import ThermalGuard

    sleeps: list[float] = []
    readings = iter([60.0, 60.0, 60.0, 60.0, 60.0, 90.0])  # hot after the campaign's step 6 (run 2, step 2)
    guard = ThermalGuard(lambda: next(readings, 60.0), pause_at=85, resume_below=75, critical_at=95,
                         poll_seconds=30, sleep=sleeps.append, clock=lambda: 30.0 * len(sleeps))
    out = tmp_path / "out"
    trainer = Trainer(str(tiny_llama), output_dir=out, save_steps=0, **ARGS)
    result = trainer.multi_run(identity_rows, controls=RunControls(temperature=guard), **CAMPAIGN)
    logs = capsys.readouterr().err
    assert sleeps == [30] and "thermal_pause" in logs
    saved = [line for line in logs.splitlines() if "checkpoint_saved" in line]
    assert any("step=6" in line and "run-0002" in line for line in saved), saved
    assert runs.get(result.run_id, out).status == "completed"


def test_the_ui_stop_checkpoints_a_campaign_and_resume_finishes_it(tiny_llama: Path, identity_rows: Path,
                                                                   tmp_path: Path) -> None:
    import time

    from backpropagate.ui.workspace import Workspace

    ws = Workspace(tmp_path / "sandbox", default_model=str(tiny_llama))
    rel = ws.save_upload(identity_rows)
    ws.start_multi_run(datasets=rel, num_runs=2, steps_per_run=40, samples_per_run=None, model=None,
                       preset="fast", max_seq_length=96)
    deadline = time.monotonic() + 180
    while len(ws.runner.snapshot().metrics) < 2 and time.monotonic() < deadline:  # a state, not a duration
        time.sleep(0.05)
    assert ws.runner.stop()
    state = ws.runner.wait(180)
    assert state.status == "stopped", state.error
    record = ws.get_run(state.result["run_id"])
    assert record.status == "interrupted" and "multi_run" in record.config and 2 <= record.completed_steps < 80
    step_dirs = list(Path(record.output_dir).glob(f"checkpoints/{record.run_id}/run-*/step-*/manifest.json"))
    assert step_dirs  # the stop wrote the run's checkpoint
    ws.start_resume(record.run_id)
    done = ws.runner.wait(300)
    assert done.status == "completed", done.error
    assert ws.get_run(record.run_id).status == "completed"
