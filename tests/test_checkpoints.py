"""Checkpoint files on a real tiny LoRA model: layout, checksums, pruning, pickle safety, and atomicity
under SIGKILL (a forked writer killed 20 times in the middle of writing)."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backpropagate import BackpropagateError
from backpropagate.data import load_examples, tokenize_examples
from backpropagate.demo import quickstart_path
from backpropagate.training.checkpoints import (
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    stale_partials,
    verify_checkpoint,
    write_checkpoint,
)
from backpropagate.training.engine import LoopConfig, LoopHooks, LoopState, train_loop
from support.faults import slow_checkpoints

FILES = {"weights.safetensors", "optimizer.pt", "scheduler.pt", "rng.safetensors", "trainer_state.json",
         "config.json", "manifest.json"}


@pytest.fixture(scope="module")
def state(tiny_llama: Path) -> LoopState:
    """A real loop after two optimizer steps (so the optimizer has moments to save)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    samples = tokenize_examples(tokenizer, load_examples(str(quickstart_path())).examples)
    cfg = LoopConfig(steps=2, batch_size=2, gradient_accumulation=2, learning_rate=1e-3, max_seq_length=64)
    seen: list[LoopState] = []
    train_loop(model, samples, cfg, pad_token_id=tokenizer.pad_token_id, hooks=LoopHooks(after_step=seen.append))
    return seen[-1]


def write(run_dir: Path, state: LoopState, step: int) -> Path:
    state.step = step
    return write_checkpoint(run_dir, state, run_id="r" * 32, config={"steps": 2})


def test_layout_checksums_and_pruning(state: LoopState, tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        write(tmp_path, state, step)
    assert prune_checkpoints(tmp_path, keep=2) == [tmp_path / "step-000001", tmp_path / "step-000002"]
    assert [c.step for c in list_checkpoints(tmp_path)] == [3, 4]
    newest = tmp_path / "step-000004"
    assert {p.name for p in newest.iterdir()} == FILES
    manifest = verify_checkpoint(newest)
    assert manifest["step"] == 4 and set(manifest["files"]) == FILES - {"manifest.json"}

    weights = load_file(newest / "weights.safetensors")
    trainable = {n: p for n, p in state.model.named_parameters() if p.requires_grad}
    assert weights.keys() == trainable.keys() and all("lora_" in n for n in weights)
    assert all(torch.equal(weights[n], trainable[n].detach()) for n in weights)
    loaded = load_checkpoint(newest)
    assert loaded.trainer_state["stream"]["plan_sha256"] == state.stream.plan_digest()
    assert loaded.optimizer["state"] and loaded.scheduler["last_epoch"] == 2

    (tmp_path / "step-000005.partial").mkdir()  # an interrupted write: reported, never listed
    (tmp_path / "step-000005.partial" / "weights.safetensors").write_bytes(b"half")
    assert stale_partials(tmp_path) == [tmp_path / "step-000005.partial"]
    assert [c.step for c in list_checkpoints(tmp_path)] == [3, 4]

    (newest / "scheduler.pt").unlink()
    with pytest.raises(BackpropagateError) as info:
        verify_checkpoint(newest)
    assert info.value.code == "STATE_CHECKPOINT_INVALID" and "scheduler.pt is missing" in info.value.message


def test_a_pickle_payload_is_never_executed(state: LoopState, tmp_path: Path) -> None:
    path = write(tmp_path, state, 1)

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    buffer = io.BytesIO()
    torch.save({"state": {}, "param_groups": [], "x": Payload()}, buffer)
    (path / "optimizer.pt").write_bytes(buffer.getvalue())
    manifest = json.loads((path / "manifest.json").read_text())  # even with a matching checksum
    import hashlib

    manifest["files"]["optimizer.pt"] = {"sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
                                         "bytes": len(buffer.getvalue())}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackpropagateError) as info:
        load_checkpoint(path)
    assert info.value.code == "STATE_CHECKPOINT_INVALID" and "cannot be read" in info.value.message
    assert not (tmp_path / "pwned").exists()


def test_sigkill_during_20_checkpoint_writes_never_breaks_the_latest_complete_one(
        state: LoopState, tmp_path: Path) -> None:
    rng = random.Random(0)
    mid_write = 0
    last_complete = write(tmp_path, state, 1) and 1  # the checkpoint every kill must leave readable
    for kill in range(20):
        pid = os.fork()
        if pid == 0:  # the child writes checkpoint after checkpoint until it is killed
            slow_checkpoints(pytest.MonkeyPatch(), 0.02)  # a short pause after each file widens the window to hit
            try:
                for i in range(1, 500):
                    write(tmp_path, state, 1000 * (kill + 1) + i)
                    prune_checkpoints(tmp_path, keep=2)
            finally:
                os._exit(0)
        # Wait until the child is writing its 1st, 2nd or 3rd checkpoint, then kill at a random instant.
        target = tmp_path / f"step-{1000 * (kill + 1) + rng.randint(1, 3):06d}.partial"
        deadline = time.monotonic() + 30
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        mid_write += any(int(p.name[5:11]) // 1000 == kill + 1 for p in stale_partials(tmp_path))
        complete = list_checkpoints(tmp_path)
        assert complete, f"kill {kill}: no complete checkpoint left"
        newest = complete[-1]
        assert newest.step >= last_complete
        loaded = load_checkpoint(newest.path)  # verifies every checksum, then reads every file
        assert loaded.weights and loaded.optimizer["state"] and loaded.trainer_state["step"] == newest.step
        last_complete = newest.step
    assert mid_write >= 10, f"only {mid_write} of 20 kills landed in the middle of a write"
