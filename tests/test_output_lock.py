"""Two `backprop train` into one output folder: the run holding `<output>/.backprop.lock` saves to `lora/`, the one
beside it to `lora-<id8>/`, and each history row points at that run's own weights."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backpropagate import runs
from backpropagate.demo import quickstart_path
from backpropagate.storage.store import RunStore
from backpropagate.training.checkpoints import list_checkpoints, run_checkpoint_dir
from backpropagate.training.output_lock import LOCK_FILE, OutputLock
from process_helpers import BACKPROP, wait_for

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ARGS = ["--data", str(quickstart_path()), "--steps", "3", "--save-steps", "1", "--lora-r", "4", "--lora-alpha", "8",
        "--batch-size", "2", "--max-seq-length", "64"]


def spawn(log: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([BACKPROP, *args], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=ENV)


def adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def checkpoint_weights(out: Path, run_id: str) -> dict[str, torch.Tensor]:
    """The run's last checkpoint, under the names PEFT saves (without the adapter name)."""
    last = list_checkpoints(run_checkpoint_dir(out, run_id))[-1]
    return {name.replace(".default.", "."): t for name, t in load_file(last.path / "weights.safetensors").items()}


@pytest.mark.slow
def test_two_trainings_into_one_folder_keep_their_own_adapters(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    model = ["--model", str(tiny_llama), "--output", str(out)]
    # The second run starts while the folder is held (here by this test, so nothing depends on timing) ...
    held = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    beside = spawn(tmp_path / "beside.log", "train", *model, *ARGS, "--seed", "2")
    wait_for(lambda: "output_in_use" in (tmp_path / "beside.log").read_text(errors="replace"),
             "the output_in_use warning", beside)
    os.close(held)
    # ... and the first, started while the second trains, takes the folder's fixed name.
    owner = spawn(tmp_path / "owner.log", "train", *model, *ARGS, "--seed", "1")
    assert owner.wait(timeout=300) == 0, (tmp_path / "owner.log").read_text()[-3000:]
    assert beside.wait(timeout=300) == 0, (tmp_path / "beside.log").read_text()[-3000:]

    history = {r.run_id: r for r in runs.list(out)}
    assert len(history) == 2 and all(r.status == "completed" for r in history.values())
    by_seed = {r.config["training"]["seed"]: r for r in history.values()}
    first, second = by_seed[1], by_seed[2]
    assert Path(first.output_path) == (out / "lora").resolve()
    assert Path(second.output_path) == (out / f"lora-{second.run_id[:8]}").resolve()
    assert f"lora-{second.run_id[:8]}" in (tmp_path / "beside.log").read_text()  # the warning names it
    for record in (first, second):  # each row's adapter is that run's own last weights
        saved, trained = adapter_weights(Path(record.output_path)), checkpoint_weights(out, record.run_id)
        assert saved.keys() == trained.keys() and all(torch.equal(saved[k], trained[k]) for k in saved)
        assert "replaced_by" not in record.details
    assert any(not torch.equal(adapter_weights(Path(first.output_path))[k], v)
               for k, v in adapter_weights(Path(second.output_path)).items())
    assert not list(out.glob("*.partial")) and not list(out.glob("*.old"))
    again = OutputLock.acquire(out)
    assert again.owned  # both runs gave the folder back
    again.release()


def test_a_replaced_adapter_is_no_longer_claimed(tmp_path: Path) -> None:
    """Run b rewrote <out>/lora: run a's row says so, in the history and in `show-run`."""
    out = tmp_path / "out"
    store = RunStore.for_output(out)
    lora = str((out / "lora").resolve())
    for run_id in ("a" * 32, "b" * 32, "c" * 32):
        store.start(run_id=run_id, model="m", dataset_path=None, dataset_hash=None, config={}, steps=1)
        store.finish(run_id, "completed", completed_steps=1, loss_history=[1.0], output_path=lora)
        store.mark_replaced(lora, by=run_id)
    details = {r.run_id: r.details for r in store.list()}
    assert details["a" * 32]["replaced_by"] == "b" * 32  # the first run that replaced it
    assert details["b" * 32]["replaced_by"] == "c" * 32 and "replaced_by" not in details["c" * 32]
    shown = subprocess.run([BACKPROP, "show-run", "a" * 8, "--output", str(out)], capture_output=True, text=True,
                           env=ENV, timeout=60, check=False)
    assert shown.returncode == 0 and f"(replaced by run {'b' * 8})" in shown.stdout


def test_the_lock_is_one_holder_at_a_time_and_dies_with_its_holder(tmp_path: Path) -> None:
    first = OutputLock.acquire(tmp_path)
    assert first.owned and not OutputLock.acquire(tmp_path).owned
    first.release()
    second = OutputLock.acquire(tmp_path)
    assert second.owned
    second.release()
    code = (f"import fcntl, os, time; fd = os.open({str(tmp_path / LOCK_FILE)!r}, os.O_RDWR); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert not OutputLock.acquire(tmp_path).owned
    finally:
        holder.kill()
        holder.wait()
    third = OutputLock.acquire(tmp_path)  # the kernel dropped the dead holder's lock
    assert third.owned and (tmp_path / LOCK_FILE).is_file()
    third.release()
