"""``backprop plan``, ``backprop info --presets`` and the method options of ``backprop train``, run as a
user runs them (subprocesses of the installed console script)."""

from __future__ import annotations

import json
from pathlib import Path

from backpropagate.demo import quickstart_path
from test_cli import run


def test_info_presets_lists_the_eight_models_and_the_lora_presets() -> None:
    out = run("info", "--presets")
    assert out.returncode == 0, out.stderr
    for name in ("qwen3.5-4b", "phi-4-mini-3.8b", "smollm3-3b", "qwen2.5-7b", "qwen2.5-3b", "llama-3.2-3b",
                 "llama-3.2-1b", "mistral-7b", "Qwen/Qwen2.5-7B-Instruct", "quality", "fast"):
        assert name in out.stdout
    data = json.loads(run("info", "--presets", "--json").stdout)
    assert len(data["models"]) == 8 and data["lora"]["quality"]["r"] == 256 and data["lora"]["fast"]["r"] == 16


def test_plan_says_what_fits_a_16_gb_card() -> None:
    fits = run("plan", "--model", "qwen2.5-7b", "--method", "qlora", "--vram", "16", "--lora-preset", "fast",
               "--json")
    assert fits.returncode == 0, fits.stderr
    plan = json.loads(fits.stdout)
    assert plan["fits"] is True and plan["settings"]["method"] == "qlora" and plan["capacity_gb"] == 16.0
    full = run("plan", "--model", "qwen2.5-7b", "--method", "full", "--vram", "16")
    assert full.returncode == 0, full.stderr
    assert "does NOT fit" in full.stdout and "try: " in full.stdout and "RUNTIME_FULL_FT_MODEL_TOO_LARGE" in full.stdout
    bad = run("plan", "--model", "qwen2.5-7b", "--method", "half")
    assert bad.returncode == 1 and "[INPUT_INVALID_VALUE]:" in bad.stderr and "Traceback" not in bad.stderr


def test_train_with_the_fast_preset_and_a_method_flag(tiny_llama: Path, tmp_path: Path) -> None:
    out = run("train", "--data", str(quickstart_path()), "--model", str(tiny_llama), "--steps", "1",
              "--output", str(tmp_path / "out"), "--lora-preset", "fast", "--use-dora", "--optim", "adamw_torch",
              "--batch-size", "1", "--gradient-accumulation", "1", "--max-seq-length", "128", "--save-steps", "0")
    assert out.returncode == 0, out.stderr
    config = json.loads((tmp_path / "out" / "lora" / "adapter_config.json").read_text())
    assert config["r"] == 16 and set(config["target_modules"]) == {"q_proj", "v_proj"} and config["use_dora"]
    assert "smart_defaults" in out.stderr and "Degradation knobs: oom_recovery=True unsloth_fallback=True" in out.stderr
    assert "gguf_export_check" in out.stderr and "GGUF export: supported" in out.stderr  # said before training
    bad = run("train", "--data", str(quickstart_path()), "--lora-preset", "turbo", "--steps", "1")
    assert bad.returncode == 1 and "[INPUT_INVALID_VALUE]:" in bad.stderr
