"""Resuming a run in-process on a real tiny model: bit-identical results, checkpoint fallback, disk full,
and the coded refusals (changed data or settings, unknown/running/finished runs, corrupt history)."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backpropagate import BackpropagateError, Trainer, runs
from backpropagate.demo import quickstart_path
from backpropagate.storage.store import RunStore
from backpropagate.training.checkpoints import list_checkpoints, run_checkpoint_dir, verify_checkpoint
from support.faults import faults

STEPS = 6
# lora_dropout stays at its default (0.05): the resumed run must also continue the dropout RNG exactly.
SMALL = {"lora_r": 4, "lora_alpha": 8, "batch_size": 2, "gradient_accumulation": 2, "max_seq_length": 64}
DATA = str(quickstart_path())


def adapter(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "lora" / "adapter_model.safetensors")


def assert_same_adapter(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name


def fail_at(point: str, step: int, detail: object, exc: BaseException):
    def hook(where: str, at_step: int, at_detail: object) -> None:
        if (where, at_step, at_detail) == (point, step, detail):
            raise exc
    return hook


@pytest.fixture(scope="module")
def reference(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[float], dict]:
    """One uninterrupted run every resumed run of this module must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("reference")
    run = Trainer(str(tiny_llama), output_dir=out, save_steps=2, **SMALL).train(DATA, steps=STEPS)
    return run.loss_history, adapter(out)


def test_disk_full_keeps_the_previous_checkpoint_then_resume_falls_back_past_a_corrupt_one(
        tiny_llama: Path, tmp_path: Path, reference: tuple[list[float], dict],
        capsys: pytest.CaptureFixture[str]) -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    trainer = Trainer(str(tiny_llama), output_dir=tmp_path, save_steps=2, **SMALL)
    with faults(fail_at("checkpoint", 6, "optimizer.pt", full)), pytest.raises(BackpropagateError) as info:
        trainer.train(DATA, steps=STEPS)
    err = info.value
    assert err.code == "STATE_WRITE_FAILED" and "disk full" in err.message
    assert "step 4 is intact" in err.message and "backprop resume" in err.hint
    record = runs.list(tmp_path)[0]
    assert record.status == "failed" and record.error_code == "STATE_WRITE_FAILED"
    run_dir = run_checkpoint_dir(tmp_path, record.run_id)
    assert [c.step for c in list_checkpoints(run_dir)] == [2, 4]  # keep_checkpoints=2
    assert not list(run_dir.glob("*.partial"))
    verify_checkpoint(run_dir / "step-000004")

    weights = run_dir / "step-000004" / "weights.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF  # one flipped bit in the newest checkpoint
    weights.write_bytes(bytes(raw))
    capsys.readouterr()
    resumed = Trainer.from_run(record.run_id[:7], tmp_path).train(resume=record.run_id[:7])
    logs = capsys.readouterr().err
    assert "checkpoint_invalid" in logs and "STATE_CHECKPOINT_INVALID" in logs and "from_step=2" in logs
    assert (run_dir / "step-000004.invalid").is_dir()  # kept for inspection, never read again
    assert resumed.run_id == record.run_id and resumed.steps == STEPS
    assert resumed.loss_history == reference[0]
    assert_same_adapter(adapter(tmp_path), reference[1])
    done = runs.get(record.run_id, tmp_path)
    assert done.status == "completed" and done.loss_history == reference[0] and done.error_code is None


def test_a_run_that_wrote_no_checkpoint_restarts_from_step_zero(
        tiny_llama: Path, tmp_path: Path, reference: tuple[list[float], dict]) -> None:
    trainer = Trainer(str(tiny_llama), output_dir=tmp_path, save_steps=2, **SMALL)
    with faults(fail_at("micro_batch", 1, 1, ValueError("boom"))), pytest.raises(BackpropagateError) as info:
        trainer.train(DATA, steps=STEPS)
    assert info.value.code == "RUNTIME_TRAINING_FAILED"
    resumed = Trainer(str(tiny_llama), output_dir=tmp_path, save_steps=2, **SMALL).train(DATA, resume=True)
    assert resumed.loss_history == reference[0]
    assert_same_adapter(adapter(tmp_path), reference[1])
    # Nothing left to resume: resume=True starts a new run instead.
    fresh = Trainer(str(tiny_llama), output_dir=tmp_path, save_steps=0, **SMALL).train(DATA, steps=1, resume=True)
    assert fresh.run_id != resumed.run_id and len(runs.list(tmp_path)) == 2


def test_resume_refuses_other_data_or_settings_unless_forced(tiny_llama: Path, tmp_path: Path) -> None:
    trainer = Trainer(str(tiny_llama), output_dir=tmp_path, save_steps=1, **SMALL)
    with faults(fail_at("micro_batch", 3, 0, ValueError("boom"))), pytest.raises(BackpropagateError):
        trainer.train(DATA, steps=4)
    run_id = runs.list(tmp_path)[0].run_id

    changed = tmp_path / "changed.jsonl"
    changed.write_text(Path(DATA).read_text() + Path(DATA).read_text().splitlines()[0] + "\n")
    with pytest.raises(BackpropagateError) as info:
        Trainer.from_run(run_id, tmp_path).train(str(changed), resume=run_id)
    assert info.value.code == "INPUT_RESUME_MISMATCH" and "dataset content" in info.value.message
    with pytest.raises(BackpropagateError) as info:
        Trainer(str(tiny_llama), output_dir=tmp_path, **{**SMALL, "lora_r": 8}).train(DATA, steps=4, resume=run_id)
    assert info.value.code == "INPUT_RESUME_MISMATCH" and "lora_r (4 -> 8)" in info.value.message
    with pytest.raises(BackpropagateError) as info:
        Trainer.from_run(run_id, tmp_path).train(resume=run_id, steps=9)
    assert "steps (4 -> 9)" in info.value.message
    # Operational settings may change freely; a changed learning rate goes through with force=True.
    forced = Trainer.from_run(run_id, tmp_path, learning_rate=1e-4, save_steps=3).train(resume=run_id, force=True)
    assert forced.steps == 4 and len(forced.loss_history) == 4
    record = runs.get(run_id, tmp_path)
    assert record.status == "completed" and record.config["training"]["learning_rate"] == 1e-4


def test_deleted_checkpoints_unknown_running_and_finished_runs(tiny_llama: Path, tmp_path: Path) -> None:
    trainer = Trainer(str(tiny_llama), output_dir=tmp_path, save_steps=1, **SMALL)
    with faults(fail_at("micro_batch", 3, 0, ValueError("boom"))), pytest.raises(BackpropagateError):
        trainer.train(DATA, steps=3)
    record = runs.list(tmp_path)[0]
    assert record.status == "failed" and len(record.checkpoints) == 2
    shutil.rmtree(run_checkpoint_dir(tmp_path, record.run_id))
    with pytest.raises(BackpropagateError) as info:
        Trainer.from_run(record.run_id, tmp_path).train(resume=record.run_id)
    assert info.value.code == "STATE_CHECKPOINT_INVALID" and "missing" in info.value.message

    with pytest.raises(BackpropagateError) as info:
        Trainer(str(tiny_llama), output_dir=tmp_path).train(DATA, resume="0123abcd")
    assert info.value.code == "STATE_RUN_NOT_FOUND"
    with pytest.raises(BackpropagateError) as info:
        Trainer.from_run("0123abcd", tmp_path)
    assert info.value.code == "STATE_RUN_NOT_FOUND"

    store = RunStore.for_output(tmp_path)
    store.start(run_id="live0000", model="m", dataset_path=None, dataset_hash=None, config={}, steps=3)
    with pytest.raises(BackpropagateError) as info:  # this very process owns the row: it is running
        Trainer(str(tiny_llama), output_dir=tmp_path).train(DATA, resume="live")
    assert info.value.code == "STATE_RUN_IN_PROGRESS"
    store.finish("live0000", "completed", loss_history=[1.0], output_path="x")
    with pytest.raises(BackpropagateError) as info:
        Trainer(str(tiny_llama), output_dir=tmp_path).train(DATA, resume="live")
    assert info.value.code == "STATE_RUN_COMPLETED"


def test_a_history_file_that_is_not_sqlite_is_a_coded_error_and_stays_untouched(
        tiny_llama: Path, tmp_path: Path) -> None:
    history = tmp_path / "runs.db"
    history.write_text(json.dumps({"not": "sqlite"}))
    for call in (lambda: Trainer(str(tiny_llama), output_dir=tmp_path).train(DATA, steps=1),
                 lambda: runs.list(tmp_path), lambda: runs.get("abc", tmp_path)):
        with pytest.raises(BackpropagateError) as info:
            call()
        assert info.value.code == "STATE_HISTORY_CORRUPT"
    assert history.read_text() == json.dumps({"not": "sqlite"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.db"]
