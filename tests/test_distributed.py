"""Multi-process training on the CPU (torchrun + gloo) through the real CLI: both ranks train, agree, match a
single process with the same global batch, write one history; a killed 2-process run resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backpropagate import runs
from backpropagate.demo import quickstart_path
from backpropagate.training.checkpoints import list_checkpoints, run_checkpoint_dir
from process_helpers import BACKPROP, wait_for
from support.faults import slow_checkpoints_env

pytestmark = pytest.mark.slow



def env(**extra: str) -> dict[str, str]:
    """The test session's environment (set up by conftest after import), one thread per process."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}

# No dropout: its masks depend on the batch shape, so one process at batch 2 and two at batch 1 would differ.
COMMON = ["--data", str(quickstart_path()), "--steps", "6", "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout",
          "0", "--gradient-accumulation", "2", "--max-seq-length", "64", "--save-steps", "1"]


def _train(model: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([BACKPROP, "train", "--model", str(model), "--output", str(out), *COMMON, *extra],
                          capture_output=True, text=True, timeout=600, env=env())


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "lora" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def two_ranks(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("ddp")
    done = _train(tiny_llama, out, "--nproc", "2", "--batch-size", "1", "--report-to", "tensorboard")
    assert done.returncode == 0, done.stderr[-4000:]
    return out, done


@pytest.fixture(scope="module")
def one_process(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same rows per step (global batch 2) in one process."""
    out = tmp_path_factory.mktemp("single")
    done = _train(tiny_llama, out, "--batch-size", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _assert_same_training(out: Path, reference: Path) -> None:
    got, want = _adapter(out), _adapter(reference)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)
    assert runs.list(out)[0].loss_history == pytest.approx(runs.list(reference)[0].loss_history, rel=1e-5)


def test_two_ranks_train_agree_and_match_one_process(two_ranks, one_process: Path) -> None:
    out, done = two_ranks
    log = done.stderr
    assert sorted(re.findall(r"rank_started\s.*?rank=(\d)", log)) == ["0", "1"]  # each rank says so once
    digests = dict(re.findall(r"rank_finished\s.*?rank=(\d).*?trainable_sha256=([0-9a-f]{64})", log))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]  # identical weights on both ranks
    assert log.count("run_started") == 1 and log.count("checkpoint_saved") == 6  # rank 0 alone logs and saves
    assert done.stdout.count("run_id:") == 1

    (record,) = runs.list(out)  # one history row, one checkpoint set, one tracker run
    assert record.status == "completed" and record.completed_steps == 6
    assert [c.name for c in (out / "checkpoints").iterdir()] == [record.run_id]
    assert [p.name for p in (out / "tensorboard").iterdir()] == [record.run_id]
    _assert_same_training(out, one_process)


def _kill_after_checkpoint(args: list[str], out: Path, step: int) -> str:
    """Start a run, SIGKILL torchrun and every rank at once (a power cut) after checkpoint ``step``."""
    import psutil

    crash = subprocess.Popen(args, env=slow_checkpoints_env(0.2, env()), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    run_id = wait_for(lambda: next((r.run_id for r in runs.list(out)), None), "its history row", crash)
    run_dir = run_checkpoint_dir(out, run_id)
    wait_for(lambda: (run_dir / f"step-{step:06d}" / "manifest.json").is_file(), f"checkpoint {step}", crash)
    for pid in [crash.pid, *(c.pid for c in psutil.Process(crash.pid).children(recursive=True))]:
        os.kill(pid, signal.SIGKILL)
    crash.wait(timeout=60)
    deadline = time.monotonic() + 60  # the ranks were torchrun's children: they die a moment later
    while runs.get(run_id, out).status != "interrupted" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert runs.get(run_id, out).status == "interrupted"
    return run_id


def _resume(args: list[str], out: Path, run_id: str, reference: Path) -> None:
    done = subprocess.run([*args, "--resume", run_id[:8]], capture_output=True, text=True, timeout=600, env=env())
    assert done.returncode == 0, done.stderr[-4000:]
    assert re.search(r"resuming\s.*from_step=[34]", done.stderr)
    assert "resume_optimizer_restarted" not in done.stderr
    record = runs.get(run_id, out)
    assert record.status == "completed" and record.completed_steps == 6 and len(record.loss_history) == 6
    assert [c.step for c in list_checkpoints(run_checkpoint_dir(out, run_id))] == [5, 6]
    _assert_same_training(out, reference)


def test_a_killed_two_process_run_resumes(tiny_llama: Path, one_process: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [BACKPROP, "train", "--model", str(tiny_llama), "--output", str(out), *COMMON, "--nproc", "2",
            "--batch-size", "1", "--report-to", "none"]
    _resume(args, out, _kill_after_checkpoint(args, out, 3), one_process)


def _fsdp_unavailable() -> str | None:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no FSDP2 (fully_shard); FSDP runs on GPUs only, see the README"
    if not torch.distributed.is_gloo_available():
        return "this torch build has no gloo backend for CPU processes"
    return None


@pytest.mark.skipif(_fsdp_unavailable() is not None, reason=str(_fsdp_unavailable()))
@pytest.mark.parametrize("resume_as", ["fsdp", "ddp"])
def test_fsdp_on_two_cpu_processes_trains_like_one_process(tiny_llama: Path, one_process: Path, tmp_path: Path,
                                                           resume_as: str) -> None:
    out = tmp_path / "fsdp"
    args = [BACKPROP, "train", "--model", str(tiny_llama), "--output", str(out), *COMMON, "--nproc", "2",
            "--batch-size", "1", "--report-to", "none"]
    run_id = _kill_after_checkpoint([*args, "--fsdp"], out, 3)
    weights = load_file(run_checkpoint_dir(out, run_id) / "step-000003" / "weights.safetensors")
    single = list_checkpoints(run_checkpoint_dir(one_process, runs.list(one_process)[0].run_id))[-1]
    want = load_file(single.path / "weights.safetensors")  # gathered whole, not one rank's shard:
    assert {k: t.shape for k, t in weights.items()} == {k: t.shape for k, t in want.items()}
    # sharded again on resume, or continued under DDP: a checkpoint does not depend on the strategy
    _resume([*args, "--fsdp"] if resume_as == "fsdp" else args, out, run_id, one_process)


def test_launcher_errors_are_coded(tiny_llama: Path, tmp_path: Path) -> None:
    done = _train(tiny_llama, tmp_path, "--nproc", "0")
    assert done.returncode == 1 and done.stderr.startswith("[INPUT_INVALID_VALUE]:") and "Traceback" not in done.stderr
    done = _train(tiny_llama, tmp_path, "--report-to", "comet")
    assert done.returncode == 1 and "[INPUT_INVALID_VALUE]:" in done.stderr and "tensorboard" in done.stderr


def _deepspeed_unavailable() -> str | None:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        return "DeepSpeed is not installed (pip install \"backpropagate[deepspeed]\")"
    return None


ZERO3 = {"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {  # thresholds 0: even the tiny
    "stage": 3, "stage3_param_persistence_threshold": 0, "stage3_model_persistence_threshold": 0}}  # model splits


@pytest.mark.skipif(_deepspeed_unavailable() is not None, reason=str(_deepspeed_unavailable()))
@pytest.mark.parametrize("stage", [2, 3])
def test_a_killed_zero_run_resumes_exactly(tiny_llama: Path, one_process: Path, tmp_path: Path, stage: int) -> None:
    config = tmp_path / "ds.json"
    config.write_text(json.dumps(ZERO3))
    out = tmp_path / f"zero{stage}"
    args = [BACKPROP, "train", "--model", str(tiny_llama), "--output", str(out), *COMMON, "--nproc", "2",
            "--batch-size", "1", "--report-to", "none", "--deepspeed", str(config), "--zero", str(stage)]
    run_id = _kill_after_checkpoint(args, out, 3)
    ckpt = run_checkpoint_dir(out, run_id) / "step-000003"
    weights = load_file(ckpt / "weights.safetensors")
    assert all(t.ndim == 2 and min(t.shape) > 0 for t in weights.values())  # gathered from the partitions
    assert sorted(p.name for p in (ckpt / "zero").iterdir()) == ["optimizer-rank0.pt", "optimizer-rank1.pt"]
    # each rank's optimizer partition comes back (read without pickle): the run ends as an unbroken one
    _resume(args, out, run_id, one_process)
