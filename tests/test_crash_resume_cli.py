"""Crash and resume through the real CLI: ``backprop train`` processes killed with SIGKILL (once in the
middle of a checkpoint write, once between steps), finished by ``backprop train --resume`` and
``backprop resume``, end bit-identical to an uninterrupted run trained at the same time into the same
output directory (so two trainings write one runs.db concurrently)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backpropagate import runs
from backpropagate.demo import quickstart_path
from backpropagate.storage.store import RunStore
from backpropagate.training.checkpoints import (
    list_checkpoints,
    run_checkpoint_dir,
    verify_checkpoint,
)
from process_helpers import BACKPROP, wait_for
from support.faults import slow_checkpoints_env

pytestmark = pytest.mark.slow

ARGS = ["--data", str(quickstart_path()), "--steps", "8", "--save-steps", "1", "--lora-r", "4",
        "--lora-alpha", "8", "--batch-size", "2", "--gradient-accumulation", "2", "--max-seq-length", "64"]


# One thread per process: several run at once on a small machine, and every run must use the same count.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def spawn(log: Path, *args: str, delay: float = 0.0) -> subprocess.Popen[bytes]:
    env = slow_checkpoints_env(delay, ENV) if delay else ENV
    return subprocess.Popen([BACKPROP, *args], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)


def run_id_of(out: Path, proc: subprocess.Popen[bytes]) -> str:
    def find() -> str | None:
        rows = [r for r in runs.list(out) if r.pid == proc.pid]
        return rows[0].run_id if rows else None
    return wait_for(find, "its history row", proc)


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def test_sigkilled_runs_resume_bit_identical(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    model = ["--model", str(tiny_llama), "--output", str(out)]
    # The reference and the run to crash start together in one output directory. The crash run writes
    # its checkpoints slowly (a test hook sleeps after each file) so it can be killed in the middle of one.
    reference = spawn(tmp_path / "reference.log", "train", *model, *ARGS, delay=0.02)
    crash = spawn(tmp_path / "crash1.log", "train", *model, *ARGS, delay=0.15)
    crash_id = run_id_of(out, crash)
    run_dir = run_checkpoint_dir(out, crash_id)
    partial = run_dir / "step-000003.partial"
    wait_for(lambda: partial.is_dir() and len(list(partial.iterdir())) >= 3, "the step-3 checkpoint write", crash)
    kill(crash)
    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    reference_row = next(r for r in runs.list(out) if r.run_id != crash_id)  # lora/, or lora-<id8> when the
    want = load_file(Path(reference_row.output_path) / "adapter_model.safetensors")  # crash run held the folder

    assert partial.is_dir() and not (run_dir / "step-000003").exists()  # the write never finished...
    assert [c.step for c in list_checkpoints(run_dir)] == [1, 2]  # ...and the last complete one is whole
    verify_checkpoint(run_dir / "step-000002")
    history = {r.run_id: r for r in runs.list(out)}
    assert len(history) == 2 and history[crash_id].status == "interrupted"
    ref = next(r for r in history.values() if r.run_id != crash_id)
    assert ref.status == "completed" and len(ref.loss_history) == 8 and ref.completed_steps == 8
    assert history[crash_id].started_at < ref.ended_at  # both trainings wrote runs.db at the same time

    # First resume through `backprop train --resume`, killed between steps after checkpoint 5.
    resumed = spawn(tmp_path / "crash2.log", "train", *model, *ARGS, "--resume", crash_id[:10], delay=0.05)
    wait_for(lambda: (run_dir / "step-000005" / "manifest.json").is_file(), "checkpoint 5", resumed)
    kill(resumed)
    log = (tmp_path / "crash2.log").read_text()
    assert "stale_partial_checkpoint" in log and "from_step=2" in log
    assert runs.get(crash_id[:10], out).status == "interrupted"

    # Then `backprop resume` finishes it.
    final = subprocess.run([BACKPROP, "resume", crash_id[:8], "--output", str(out)], capture_output=True,
                           text=True, timeout=300, env=ENV)
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"run_id: {crash_id}" in final.stdout
    assert "from_step=5" in final.stderr or "from_step=6" in final.stderr  # killed during step 6
    got = load_file(out / "lora" / "adapter_model.safetensors")
    assert got.keys() == want.keys() and want
    for name in want:
        assert torch.equal(got[name], want[name]), name
    done = runs.get(crash_id, out)
    assert done.status == "completed" and done.loss_history == ref.loss_history
    assert [c.step for c in list_checkpoints(run_dir)] == [7, 8]


def test_resume_cli_errors_are_coded(tmp_path: Path) -> None:
    result = subprocess.run([BACKPROP, "resume", "feedbeef", "--output", str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1 and "[STATE_RUN_NOT_FOUND]:" in result.stderr and "Traceback" not in result.stderr
    store = RunStore.for_output(tmp_path)
    for run_id in ("feed0001", "feed0002"):
        store.start(run_id=run_id, model="m", dataset_path=None, dataset_hash=None, config={}, steps=1)
        store.finish(run_id, "failed", error_code="RUNTIME_GPU_OOM")
    result = subprocess.run([BACKPROP, "resume", "feed", "--output", str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert "[INPUT_RUN_ID_AMBIGUOUS]:" in result.stderr and "feed0001" in result.stderr
    (tmp_path / "runs.db").unlink()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"runs.db{suffix}").unlink(missing_ok=True)
    (tmp_path / "runs.db").write_text("not a database")
    result = subprocess.run([BACKPROP, "resume", "feed", "--output", str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert "[STATE_HISTORY_CORRUPT]:" in result.stderr and "hint:" in result.stderr
