"""One rule for where output may go, through the real CLI: train, multi-run, export, the data tools, history
exports and the UI refuse the filesystem root and system folders before loading anything, creating nothing."""

from __future__ import annotations

import os
import random
import subprocess
import uuid
from pathlib import Path

import pytest

from backpropagate.atomic import SYSTEM_DIRS, check_output_location
from backpropagate.demo import quickstart_path
from backpropagate.errors import BackpropagateError
from process_helpers import BACKPROP

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DATA = str(quickstart_path())
ROOT_NAMES = ("runs.db", "lora", "checkpoints", ".backprop.lock", "model", "merged", "gguf")


def system_paths(count: int, seed: int, suffix: str = "") -> list[str]:
    """Fresh names under system folders that exist here (a different draw per seed)."""
    rng = random.Random(seed)
    present = [d for d in SYSTEM_DIRS if Path(d).is_dir()]
    picked = rng.sample(present, min(count, len(present)))
    return [f"{d}/{'x/' * rng.randint(0, 2)}backprop-test-{uuid.uuid4().hex[:8]}{suffix}" for d in picked]


def refused(*args: str, env: dict[str, str] | None = None, code: str = "INPUT_OUTPUT_PATH_FORBIDDEN") -> str:
    done = subprocess.run([BACKPROP, *args], capture_output=True, text=True, env=env or ENV, timeout=120, check=False)
    assert done.returncode == 1, (args, done.stdout[-1500:], done.stderr[-1500:])
    assert f"[{code}]:" in done.stderr and "Traceback" not in done.stderr, done.stderr[-1500:]
    assert "[info" not in done.stderr and "[warning" not in done.stderr  # refused before loading anything
    return done.stderr


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from backpropagate import Trainer
    from backpropagate.testing import build_tiny_model

    trainer = Trainer(str(build_tiny_model("llama", size="tiny", seed=0)), lora_r=4, lora_alpha=8,
                      max_seq_length=64, batch_size=2, output_dir=tmp_path_factory.mktemp("adapter"), save_steps=0)
    return Path(trainer.train(DATA, steps=1).output_path)


def test_the_rule() -> None:
    for path in ("/", "/etc/x", "/usr/lib/x", "/var/lib/x", "/proc/1/x", "/tmp/../etc/x"):
        for holds in (False, True):
            with pytest.raises(BackpropagateError) as caught:
                check_output_location(path, holds_outputs=holds)
            assert caught.value.code == "INPUT_OUTPUT_PATH_FORBIDDEN"
    with pytest.raises(BackpropagateError):
        check_output_location("/model.gguf")  # a file directly in the root
    assert check_output_location("/workspace", holds_outputs=True) == Path("/workspace")  # holds /workspace/lora


@pytest.mark.parametrize("command", ["train", "multi-run"])
def test_training_refuses_system_folders_and_the_root(command: str, tiny_llama: Path) -> None:
    before = {name: (Path("/") / name).exists() for name in ROOT_NAMES}
    for path in [*system_paths(3, seed=hash(command) & 0xFFFF), "/"]:
        message = refused(command, "--data", DATA, "--model", str(tiny_llama), "--steps", "1", "--output", path)
        assert "filesystem root" in message if path == "/" else "system directory" in message
        assert path == "/" or not Path(path).exists()
    assert {name: (Path("/") / name).exists() for name in ROOT_NAMES} == before


@pytest.mark.slow
def test_export_refuses_system_folders_and_the_root(adapter: Path) -> None:
    for path in [*system_paths(2, seed=7), "/", "/backprop-test.gguf"]:
        refused("export", str(adapter), "-q", "f16", "--no-verify", "--output", path)
    for path in [*system_paths(2, seed=8), "/"]:
        refused("export", str(adapter), "--format", "merged", "--output", path)
        assert path == "/" or not Path(path).exists()


def test_data_tools_refuse_system_folders_and_the_root(tiny_llama: Path) -> None:
    for path in [*system_paths(2, seed=11, suffix=".jsonl"), f"/backprop-test-{uuid.uuid4().hex[:8]}.jsonl"]:
        refused("data", "dedup", DATA, "--out", path)
        refused("data", "filter", DATA, "--out", path)
        refused("data", "curriculum", DATA, "--out", path)
        refused("data", "perplexity", DATA, "--out", path, "--model", str(tiny_llama))
        assert not Path(path).exists()
    for path in system_paths(2, seed=12, suffix=".json"):
        refused("data", "report", DATA, "--json", path)
        refused("export-runs", "--out", path)
        assert not Path(path).exists()


def test_ui_refuses_a_system_sandbox() -> None:
    for path in [*system_paths(2, seed=13), "/"]:
        refused("ui", env={**ENV, "BACKPROPAGATE_UI__OUTPUT_DIR": path}, code="INPUT_SANDBOX_FORBIDDEN")
        assert path == "/" or not Path(path).exists()
