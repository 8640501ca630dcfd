"""The ``backprop`` command end to end, in subprocesses, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backpropagate.demo import quickstart_path

BACKPROP = str(Path(sys.executable).with_name("backprop"))


def run(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([BACKPROP, *args], capture_output=True, text=True, env=full_env, timeout=timeout)


def test_version_and_help() -> None:
    from backpropagate import __version__

    assert run("--version").stdout.strip() == f"backpropagate {__version__}"
    out = run("--help").stdout
    for command in ("train", "info", "demo"):
        assert command in out


def test_info() -> None:
    result = run("info", "--json")
    assert result.returncode == 0
    report = json.loads(result.stdout)
    for key in ("python", "torch", "cuda_available", "os", "transformers", "peft", "extras"):
        assert key in report
    assert "python" in run("info").stdout


def test_info_error_codes() -> None:
    from backpropagate.errors import CATALOG

    out = run("info", "--error-codes").stdout
    for code in CATALOG:
        assert code in out


def test_train_end_to_end(tiny_llama: Path, tmp_path: Path) -> None:
    result = run("train", "--data", str(quickstart_path()), "--model", str(tiny_llama), "--steps", "4",
                 "--output", str(tmp_path / "out"), "--lora-r", "8", "--lora-alpha", "16",
                 "--gradient-accumulation", "1")
    assert result.returncode == 0, result.stderr
    assert "run_started" in result.stderr and "run_id" in result.stderr
    assert (tmp_path / "out" / "lora" / "adapter_model.safetensors").is_file()
    assert "final loss" in result.stdout


def test_errors_print_code_and_hint_without_traceback(tmp_path: Path) -> None:
    result = run("train", "--data", str(tmp_path / "missing.jsonl"), "--model", "x/y", "--steps", "1",
                 "--output", str(tmp_path / "o"))
    assert result.returncode == 1
    assert "[INPUT_FILE_NOT_FOUND]:" in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.stderr
    # Checked first: no start-up table, no run id, nothing written.
    assert "smart_defaults" not in result.stderr and "run_started" not in result.stderr
    assert not (tmp_path / "o").exists()
    model = run("train", "--data", str(quickstart_path()), "--model", str(tmp_path / "no-model"), "--steps", "1",
                "--output", str(tmp_path / "o"))
    assert "[DEP_MODEL_LOAD_FAILED]: model folder" in model.stderr and "does not exist" in model.stderr
    assert "smart_defaults" not in model.stderr and not (tmp_path / "o").exists()
    verbose = run("--verbose", "train", "--data", str(tmp_path / "missing.jsonl"), "--steps", "1")
    assert "Traceback" in verbose.stderr and "[INPUT_FILE_NOT_FOUND]:" in verbose.stderr


def test_bad_steps_and_env_errors(tmp_path: Path) -> None:
    data = str(quickstart_path())
    result = run("train", "--data", data, "--steps", "0", "--output", str(tmp_path / "o"))
    assert "[INPUT_INVALID_VALUE]:" in result.stderr and result.returncode == 1
    result = run("train", "--data", data, "--steps", "1", env={"BACKPROPAGATE_LORA__R": "lots"})
    assert "[INPUT_CONFIG_INVALID]:" in result.stderr and "BACKPROPAGATE_LORA__R" in result.stderr



def test_a_hub_id_that_cannot_load_fails_at_once_before_the_table(tmp_path: Path) -> None:
    """A misspelled id, offline or with the Hub unreachable, is one coded line with no retry loop (transformers
    retries for half a minute), before the start-up table and any run id."""
    from export_helpers import closed_port, fake_hub

    args = ("train", "--data", str(quickstart_path()), "--model", "Qwen/Qwen2.5-0.5B-Instrukt", "--steps", "1",
            "--output", str(tmp_path / "o"))
    unreachable = run(*args, env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"})
    offline = run(*args, env={"HF_HUB_OFFLINE": "1"})
    with fake_hub() as hub:  # a Hub that answers "Repository not found" for a repo it does not have
        missing = run(*args, env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url})
    assert "the Hub cannot be reached" in unreachable.stderr and "HF_HUB_OFFLINE is set" in offline.stderr
    assert "there is no model 'Qwen/Qwen2.5-0.5B-Instrukt' on the Hub" in missing.stderr
    for result in (unreachable, offline, missing):
        assert result.returncode == 1 and result.stderr.startswith("[DEP_MODEL_LOAD_FAILED]:"), result.stderr
        assert "Retrying" not in result.stderr and "Traceback" not in result.stderr
        assert "smart_defaults" not in result.stderr and "run_started" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_secrets_are_redacted_in_errors(tmp_path: Path) -> None:
    result = run("train", "--data", str(quickstart_path()), "--model", "./hf_abcdefghijklmnopqrstuvwxyz/model",
                 "--steps", "1", "--output", str(tmp_path / "o"))
    assert result.returncode == 1
    assert "hf_abcdefghijklmnopqrstuvwxyz" not in result.stderr + result.stdout
    assert "[DEP_MODEL_LOAD_FAILED]:" in result.stderr


@pytest.mark.slow
def test_demo_finishes_with_the_tuned_answer(tmp_path: Path) -> None:
    result = run("demo", "--output", str(tmp_path / "demo"), timeout=900)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines() if ":" in line)
    assert lines["expected"].strip() == lines["tuned"].strip() == "A programming language."
    assert "match: yes" in result.stdout
