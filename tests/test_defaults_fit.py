"""Smart defaults that fit the card: chosen from the memory plan, explained, never overriding the user, and a
coded refusal (before any weight loads) when what the user set cannot fit. CPU only: the cards are
``HardwareFacts.gpu(N)``, the models the presets' built-in dimensions (no weights)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from backpropagate import BackpropagateError, Trainer
from backpropagate import trainer as trainer_module
from backpropagate.hardware import HardwareFacts
from backpropagate.plan import GB
from backpropagate.plan_table import CARDS_GB, cell, fit_table, readme_section
from backpropagate.presets import MODEL_PRESETS
from backpropagate.training.fit import SAFETY_MARGIN
from support.hub_cache import cache_hub_config

REPO = Path(__file__).resolve().parents[1]
CPU = HardwareFacts(device="cpu", ram_gb=64)


def _card(gb: float) -> HardwareFacts:
    return replace(HardwareFacts.gpu(gb), bitsandbytes=True)  # the qlora extra, as the README's table assumes


def _why(defaults: object) -> dict[str, str]:
    return {c.setting: c.why for c in defaults.choices}  # type: ignore[attr-defined]


def test_qwen_7b_on_a_16_gb_card_fits_by_the_plan_and_says_why() -> None:
    trainer = Trainer("qwen2.5-7b")
    d = trainer.smart_defaults(HardwareFacts.gpu(16))
    plan = trainer.plan(vram_gb=16)
    assert plan.fits is True and plan.total_bytes <= (1 - SAFETY_MARGIN) * 16 * GB
    assert d.load_in_4bit is True and plan.settings.method == "qlora"  # bf16 weights alone are 14.2 GB
    why = _why(d)
    assert "bf16 weights 14.2 GB leave no room on a 16 GB card" in why["load_in_4bit"]
    assert why["memory"].startswith("memory plan of these values") and "of 16 GB" in d.table()
    # the plan is the plan of the run: same values, same changes, listed in its report
    s = plan.settings
    assert (s.batch_size, s.optim, s.lora_r, s.gradient_checkpointing) == (
        d.batch_size, d.optim, d.lora_r, d.gradient_checkpointing)
    assert plan.changes == d.changes and d.changes
    assert all(f"chosen     {change}" in plan.report() for change in d.changes)
    assert d.batch_size * d.gradient_accumulation == 16  # the effective batch is kept


@pytest.mark.parametrize("card", CARDS_GB)
@pytest.mark.parametrize("model", [p.key for p in MODEL_PRESETS])
def test_every_preset_and_card_fits_or_says_exactly_why_not(model: str, card: int) -> None:
    trainer = Trainer(model)
    d = trainer.smart_defaults(_card(card))
    plan = trainer.plan(vram_gb=card) if d.load_in_4bit is False or _card(card).bitsandbytes else None
    assert plan is not None
    why = _why(d)
    for change in d.changes:  # every change names its setting and a reason with the plan's numbers
        setting, reason = change.split(": ", 1)
        assert "=" in setting and "GB" in reason
    if any(c.startswith("lora=") for c in d.changes):  # the last resort is loud
        assert "LOWERED" in why["method"] and d.warnings
    text = cell(model, card)
    if plan.fits:
        assert plan.total_bytes <= card * GB and "does not fit" not in text
    else:  # the leanest the defaults may choose, the plan's peak, and the change that would make it fit
        assert text.startswith("**does not fit**") and "does NOT fit" in why["memory"]
        assert plan.suggestions and plan.suggestions[-1].fits
    assert plan.total_bytes <= (1 - SAFETY_MARGIN) * card * GB, text  # with the chunked loss, all of them fit


def test_the_readme_table_is_the_scripts_output() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme_section(readme) == fit_table(), "run: python -m backpropagate.plan_table --write README.md"


@pytest.mark.parametrize("kwargs,setting,value", [
    ({"load_in_4bit": False}, "load_in_4bit", False),
    ({"lora_r": 256, "batch_size": 8}, "lora_r", 256),
    ({"batch_size": 8}, "batch_size", 8),
    ({"optim": "adamw_torch"}, "optim", "adamw_torch"),
    ({"lora_preset": "quality"}, "lora_r", 256),
])
def test_explicit_settings_are_never_changed(kwargs: dict, setting: str, value: object) -> None:
    d = Trainer("qwen2.5-7b", **kwargs).smart_defaults(_card(12))
    assert getattr(d, setting) == value
    assert not any(c.startswith(f"{setting}=") for c in d.changes)



def test_the_presets_rank_is_capped_by_the_models_widest_layer(tiny_llama: Path) -> None:
    """The tiny llama's layers are at most 64 wide: the quality preset's r=256 only costs time there. The
    rank drops to 64 with alpha (alpha / r kept), the start-up table says so; a rank the user set stays."""
    capped = Trainer(str(tiny_llama)).smart_defaults(CPU)
    assert (capped.lora_r, capped.lora_alpha) == (64, 128.0)
    assert "r=64 alpha=128" in capped.table() and "r capped at 64 (from 256)" in _why(capped)["method"]
    assert Trainer(str(tiny_llama)).settings.lora.r == 256  # the settings keep the preset; the run uses 64
    for kwargs in ({"lora_r": 256}, {"lora_r": 16}):
        kept = Trainer(str(tiny_llama), **kwargs).smart_defaults(CPU)
        assert kept.lora_r == kwargs["lora_r"] and "capped" not in kept.table()
    wide = Trainer("qwen2.5-7b").smart_defaults(CPU)  # 3584 wide: the preset stands
    assert wide.lora_r == 256 and "capped" not in wide.table()


def test_an_environment_variable_counts_as_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKPROPAGATE_MODEL__LOAD_IN_4BIT", "false")
    d = Trainer("qwen2.5-7b").smart_defaults(_card(16))
    assert d.load_in_4bit is False and _why(d)["load_in_4bit"] == "set by BACKPROPAGATE_MODEL__LOAD_IN_4BIT"
    assert "does NOT fit" in _why(d)["memory"]


def test_the_cpu_keeps_todays_values() -> None:
    d = Trainer("qwen2.5-7b").smart_defaults(CPU)
    assert (d.load_in_4bit, d.batch_size, d.lora_r, d.changes) == (False, 2, 256, ())
    assert _why(d)["memory"].startswith("CPU: RAM is the limit")


def _on_card(monkeypatch: pytest.MonkeyPatch, gb: int) -> None:
    """The Trainer probes a GPU of ``gb`` GB instead of this machine, which has fetched the 7B's config once
    (so the run gets past the model check, offline, to the memory check)."""
    monkeypatch.setattr(trainer_module, "probe_hardware", lambda: _card(gb))
    cache_hub_config("Qwen/Qwen2.5-7B-Instruct")


def _data(tmp_path: Path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    return path


@pytest.mark.parametrize("kwargs,card", [({"load_in_4bit": False}, 16), ({"lora_r": 256, "batch_size": 8}, 16)])
def test_a_setting_that_cannot_fit_is_refused_before_any_weight_loads(tmp_path: Path, kwargs: dict, card: int,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = Trainer("qwen2.5-7b", output_dir=tmp_path / "out", **kwargs)
    _on_card(monkeypatch, card)
    with pytest.raises(BackpropagateError) as info:
        trainer.train(_data(tmp_path), steps=1)
    err = info.value
    assert err.code == "RUNTIME_WILL_NOT_FIT" and f"the card has {card:.1f} GB" in err.message
    assert "Suggestions: " in err.message and "you set: " in err.message and "memory_check" in err.hint
    assert trainer.model is None and trainer.tokenizer is None and trainer.backend is None  # nothing loaded


@pytest.mark.parametrize("check", ["warn", "off"])
def test_memory_check_lets_it_pass_the_check(tmp_path: Path, check: str, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = Trainer("qwen2.5-7b", output_dir=tmp_path / "out", load_in_4bit=False, memory_check=check)
    _on_card(monkeypatch, 16)
    unknown = tmp_path / "unknown.jsonl"  # a file that exists (checked first) in no known format
    unknown.write_text('{"foo": 1}\n')
    with pytest.raises(BackpropagateError) as info:  # past the check, the next step is reading the data
        trainer.train(unknown, steps=1)
    assert info.value.code == "INPUT_UNKNOWN_FORMAT" and trainer.model is None


def test_memory_check_is_validated() -> None:
    with pytest.raises(BackpropagateError) as info:
        Trainer("qwen2.5-7b", memory_check="maybe")  # type: ignore[arg-type]
    assert info.value.code == "INPUT_INVALID_VALUE" and "memory_check" in info.value.message


def test_the_fitted_values_reach_the_load(tiny_llama: Path, tmp_path: Path) -> None:
    """The loader applies the defaults' 4-bit choice and LoRA shape (here forced, since a CPU never fits)."""
    from bitsandbytes.nn import Linear4bit

    from backpropagate.training.loader import load_for_training

    trainer = Trainer(str(tiny_llama), output_dir=tmp_path, optim="adamw_torch")
    chosen = replace(trainer.smart_defaults(CPU), load_in_4bit=True, lora_r=4, lora_alpha=8.0)
    loaded = load_for_training(trainer.settings, chosen)
    assert any(isinstance(m, Linear4bit) for m in loaded.model.modules())
    assert loaded.model.peft_config["default"].r == 4
    assert trainer.settings.model.load_in_4bit is False and trainer.settings.lora.r == 256  # untouched


def test_a_card_too_small_says_why_not_and_what_would_fit() -> None:
    text = cell("qwen2.5-7b", 4)
    assert text.startswith("**does not fit**: ") and "QLoRA r=16 q_proj,v_proj (lowered)" in text
    assert text.endswith("; the weights alone are 5.2 GB")


def test_backprop_plan_prints_the_plan_the_run_will_use() -> None:
    from test_cli import run

    out = run("plan", "--model", "qwen2.5-7b", "--vram", "16")
    assert out.returncode == 0, out.stderr
    assert "chosen     load_in_4bit=True: bf16 weights 14.2 GB leave no room" in out.stdout
    assert "method     qlora" in out.stdout and "verdict    fits" in out.stdout
    pinned = run("plan", "--model", "qwen2.5-7b", "--vram", "16", "--method", "lora")
    assert "method     lora" in pinned.stdout and "does NOT fit" in pinned.stdout  # 16-bit pinned: the plan says so
    assert "try: load_in_4bit=True (QLoRA)" in pinned.stdout


def test_a_campaign_that_cannot_fit_is_refused_before_any_weight_loads(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                            for i in range(30)))
    trainer = Trainer("qwen2.5-7b", output_dir=tmp_path / "out", load_in_4bit=False)
    _on_card(monkeypatch, 16)
    with pytest.raises(BackpropagateError) as info:
        trainer.multi_run(str(rows), num_runs=2, steps_per_run=1)
    assert info.value.code == "RUNTIME_WILL_NOT_FIT" and "the card has 16.0 GB" in info.value.message
    assert trainer.model is None
    warned = Trainer("qwen2.5-7b", output_dir=tmp_path / "out", load_in_4bit=False, memory_check="warn")
    with pytest.raises(BackpropagateError) as info:  # past the check, it goes on to load the model
        warned.multi_run(str(rows), num_runs=2, steps_per_run=1)
    assert info.value.code != "RUNTIME_WILL_NOT_FIT"
