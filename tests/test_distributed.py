"""Multi-process training on the CPU (torchrun + gloo) through the real CLI: both ranks train, agree, match a
single process with the same global batch, write one history; a killed 2-process run resumes."""

from __future__ import annotations

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
from backpropagate.training.checkpoints import DELAY_ENV, list_checkpoints, run_checkpoint_dir
from process_helpers import BACKPROP, wait_for

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


def test_two_ranks_train_agree_and_match_one_process(two_ranks, tiny_llama: Path, tmp_path: Path) -> None:
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

    single = tmp_path / "single"
    alone = _train(tiny_llama, single, "--batch-size", "2")  # the same rows per step in one process
    assert alone.returncode == 0, alone.stderr[-3000:]
    got, want = _adapter(out), _adapter(single)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)
    assert runs.list(single)[0].loss_history == pytest.approx(record.loss_history, rel=1e-5)


def test_a_killed_two_process_run_resumes(two_ranks, tiny_llama: Path, tmp_path: Path) -> None:
    reference, _ = two_ranks
    out = tmp_path / "out"
    args = [BACKPROP, "train", "--model", str(tiny_llama), "--output", str(out), *COMMON, "--nproc", "2",
            "--batch-size", "1", "--report-to", "none"]
    crash = subprocess.Popen(args, env=env(**{DELAY_ENV: "0.2"}), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    run_id = wait_for(lambda: next((r.run_id for r in runs.list(out)), None), "its history row", crash)
    run_dir = run_checkpoint_dir(out, run_id)
    wait_for(lambda: (run_dir / "step-000003" / "manifest.json").is_file(), "checkpoint 3", crash)
    import psutil

    family = [crash.pid, *(c.pid for c in psutil.Process(crash.pid).children(recursive=True))]
    for pid in family:  # torchrun and both ranks (in their own sessions) at once, like a power cut
        os.kill(pid, signal.SIGKILL)
    crash.wait(timeout=60)
    deadline = time.monotonic() + 60  # the ranks were torchrun's children: they die a moment later
    while runs.get(run_id, out).status != "interrupted" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert runs.get(run_id, out).status == "interrupted"

    done = subprocess.run([*args, "--resume", run_id[:8]], capture_output=True, text=True, timeout=600, env=env())
    assert done.returncode == 0, done.stderr[-4000:]
    assert re.search(r"resuming\s.*from_step=[34]", done.stderr)
    record = runs.get(run_id, out)
    assert record.status == "completed" and record.completed_steps == 6 and len(record.loss_history) == 6
    assert [c.step for c in list_checkpoints(run_dir)] == [5, 6]
    got, want = _adapter(out), _adapter(reference)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)


def test_launcher_errors_are_coded(tiny_llama: Path, tmp_path: Path) -> None:
    done = _train(tiny_llama, tmp_path, "--nproc", "0")
    assert done.returncode == 1 and done.stderr.startswith("[INPUT_INVALID_VALUE]:") and "Traceback" not in done.stderr
    done = _train(tiny_llama, tmp_path, "--report-to", "comet")
    assert done.returncode == 1 and "[INPUT_INVALID_VALUE]:" in done.stderr and "tensorboard" in done.stderr
