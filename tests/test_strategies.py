"""FSDP and DeepSpeed settings: what each strategy refuses is a coded error before any process starts, and a
DeepSpeed config file is read strictly (the multi-process runs themselves are in test_distributed.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backpropagate import Trainer
from backpropagate.errors import BackpropagateError
from backpropagate.training.zero import engine_config, load_config
from process_helpers import BACKPROP


def _code(**kwargs: object) -> str:
    with pytest.raises(BackpropagateError) as info:
        Trainer("tiny", **kwargs)
    return info.value.code


def test_strategy_limits_are_coded(tmp_path: Path) -> None:
    assert _code(strategy="fsdp", load_in_4bit=True) == "INPUT_STRATEGY_UNSUPPORTED"
    assert _code(strategy="fsdp", init_lora_weights="pissa") == "INPUT_STRATEGY_UNSUPPORTED"
    assert _code(zero_stage=3, load_in_4bit=True) == "INPUT_STRATEGY_UNSUPPORTED"
    assert _code(strategy="fsdp", zero_stage=2) == "INPUT_INVALID_VALUE"
    assert _code(strategy="horovod") == "INPUT_INVALID_VALUE"
    assert _code(zero_stage=5) == "INPUT_INVALID_VALUE"
    # a DeepSpeed option alone picks the DeepSpeed strategy; ZeRO-2 takes QLoRA
    assert Trainer("tiny", zero_stage=2, load_in_4bit=True).settings.training.strategy == "deepspeed"


def test_a_deepspeed_config_is_read_strictly(tmp_path: Path) -> None:
    bad = tmp_path / "ds.json"
    bad.write_text('{"zero_optimization": {"stage": 3,}}')  # a trailing comma
    with pytest.raises(BackpropagateError) as info:
        Trainer("tiny", deepspeed_config=bad)
    assert info.value.code == "INPUT_INVALID_JSON" and "line 1" in info.value.message
    assert _code(deepspeed_config=tmp_path / "missing.json") == "INPUT_FILE_NOT_FOUND"
    for content, code in [("[1, 2]", "INPUT_CONFIG_INVALID"),
                          ('{"optimizer": {"type": "AdamW"}}', "INPUT_CONFIG_INVALID"),
                          ('{"zero_optimization": {"stage": 7}}', "INPUT_CONFIG_INVALID")]:
        bad.write_text(content)
        assert _code(deepspeed_config=bad) == code, content

    bad.write_text(json.dumps({"zero_optimization": {"stage": 3, "overlap_comm": True},
                               "train_micro_batch_size_per_gpu": "auto"}))
    config = load_config(bad, zero_stage=None)
    assert config["zero_optimization"] == {"stage": 3, "overlap_comm": True}
    assert load_config(bad, zero_stage=2)["zero_optimization"]["stage"] == 2  # the option wins over the file
    assert load_config(None, zero_stage=None)["zero_optimization"] == {"stage": 2}
    full = engine_config(config, micro_batch=2, accumulation=4, max_grad_norm=1.0, world_size=2, bf16=True)
    assert (full["train_micro_batch_size_per_gpu"], full["gradient_accumulation_steps"],
            full["train_batch_size"], full["bf16"]) == (2, 4, 16, {"enabled": True})
    with pytest.raises(BackpropagateError) as info:  # the file disagrees with the run's batch shape
        engine_config({**config, "gradient_accumulation_steps": 8}, micro_batch=2, accumulation=4,
                      max_grad_norm=1.0, world_size=2, bf16=False)
    assert info.value.code == "INPUT_CONFIG_INVALID" and "gradient_accumulation" in info.value.hint


def test_deepspeed_not_installed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # what Python does for a package that is not installed
    with pytest.raises(BackpropagateError) as info:
        Trainer("tiny", zero_stage=2)
    assert info.value.code == "DEP_EXTRA_MISSING" and "backpropagate[deepspeed]" in info.value.hint


def test_the_cli_refuses_before_launching(tmp_path: Path, tiny_llama: Path) -> None:
    bad = tmp_path / "ds.json"
    bad.write_text("{not json")
    data = tmp_path / "d.jsonl"  # data and model exist: what is refused is the strategy
    data.write_text('{"text": "hello"}\n')
    for extra, code in [(["--deepspeed", str(bad)], "INPUT_INVALID_JSON"),
                        (["--fsdp", "--load-in-4bit"], "INPUT_STRATEGY_UNSUPPORTED")]:
        done = subprocess.run([BACKPROP, "train", "--data", str(data), "--model", str(tiny_llama),
                               "--nproc", "2", *extra], capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and done.stderr.startswith(f"[{code}]:"), done.stderr[-2000:]
        assert "Traceback" not in done.stderr and "torch.distributed" not in done.stderr
