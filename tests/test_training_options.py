"""Every Trainer parameter of the reference table changes what is built: the adapter, the optimizer, or
the run's arguments. Models are the tiny real ones; nothing of torch/transformers/peft is mocked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from backpropagate import BackpropagateError, Trainer, TrainingCallback
from backpropagate.demo import quickstart_path
from backpropagate.hardware import HardwareFacts
from backpropagate.training.loader import load_for_training

DATA = str(quickstart_path())
CPU = HardwareFacts(device="cpu", ram_gb=16.0)


def _load(tiny: Path, tmp: Path, **kw: object) -> object:
    trainer = Trainer(str(tiny), output_dir=tmp, **kw)
    return load_for_training(trainer.settings, trainer.smart_defaults(CPU))


def _lora_layers(model: torch.nn.Module) -> dict[str, object]:
    return {name.rsplit(".", 1)[-1]: module for name, module in model.named_modules()
            if hasattr(module, "lora_A") and "default" in getattr(module, "r", {})}


def _train_lr(tiny: Path, tmp: Path, **kw: object) -> float:
    """The learning rate the optimizer really used (reported by the scheduler after step 1)."""
    seen: list[float] = []
    Trainer(str(tiny), output_dir=tmp, warmup_ratio=0.0, lr_scheduler="constant", gradient_accumulation=1,
            batch_size=1, max_seq_length=128, save_steps=0, **kw).train(
        DATA, steps=1, callback=TrainingCallback(on_log=lambda m: seen.append(m["learning_rate"])))
    return seen[0]


# ---- LoRA presets and the precedence argument > env > preset > default ----------------------------
def test_preset_fast_is_rank_16_on_q_and_v_with_the_base_learning_rate(tiny_llama: Path, tmp_path: Path) -> None:
    layers = _lora_layers(_load(tiny_llama, tmp_path, lora_preset="fast").model)
    assert set(layers) == {"q_proj", "v_proj"}
    assert {m.r["default"] for m in layers.values()} == {16}
    assert {m.scaling["default"] for m in layers.values()} == {32 / 16}
    assert _train_lr(tiny_llama, tmp_path / "run", lora_preset="fast") == pytest.approx(2e-4)


def test_preset_quality_is_rank_256_everywhere_with_ten_times_the_learning_rate(tiny_llama: Path,
                                                                               tmp_path: Path) -> None:
    layers = _lora_layers(_load(tiny_llama, tmp_path).model)  # quality is the default
    assert set(layers) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # 256 everywhere, capped at the tiny model's widest layer (64 wide); alpha with it (512 -> 128)
    assert {m.r["default"] for m in layers.values()} == {64}
    assert {m.lora_alpha["default"] for m in layers.values()} == {128}
    assert _train_lr(tiny_llama, tmp_path / "run") == pytest.approx(2e-3)


def test_env_and_arguments_override_the_preset(tiny_llama: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKPROPAGATE_LORA__R", "8")
    trainer = Trainer(str(tiny_llama), lora_preset="fast")
    assert (trainer.settings.lora.r, trainer.settings.lora.alpha) == (8, 32)  # env beats preset, alpha from it
    assert trainer.settings.source("lora_r") == "env" and trainer.settings.source("lora_alpha") == "preset fast"
    layers = _lora_layers(_load(tiny_llama, tmp_path, lora_preset="fast").model)
    assert {m.r["default"] for m in layers.values()} == {8} and set(layers) == {"q_proj", "v_proj"}
    assert Trainer(str(tiny_llama), lora_r=4, lora_preset="fast").settings.lora.r == 4  # argument beats env
    monkeypatch.setenv("BACKPROPAGATE_TRAINING__LEARNING_RATE", "5e-4")
    assert Trainer(str(tiny_llama)).settings.training.learning_rate == 5e-4  # no x10 on an explicit rate
    assert _train_lr(tiny_llama, tmp_path / "run", learning_rate=3e-4) == pytest.approx(3e-4)


def test_alpha_dropout_and_target_modules_shape_the_adapter(tiny_llama: Path, tmp_path: Path) -> None:
    layers = _lora_layers(_load(tiny_llama, tmp_path, lora_r=4, lora_alpha=12, lora_dropout=0.2,
                                target_modules=["k_proj", "down_proj"]).model)
    assert set(layers) == {"k_proj", "down_proj"}
    assert {m.scaling["default"] for m in layers.values()} == {3.0}
    assert {m.lora_dropout["default"].p for m in layers.values()} == {0.2}
    no_dropout = _lora_layers(_load(tiny_llama, tmp_path, lora_r=4, lora_dropout=0.0).model)
    assert all(isinstance(m.lora_dropout["default"], torch.nn.Identity) for m in no_dropout.values())


def test_model_preset_short_names_resolve_to_hub_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Trainer("qwen2.5-7b").settings.model.name == "Qwen/Qwen2.5-7B-Instruct"
    assert Trainer("Llama 3.2 1B").settings.model.name == "meta-llama/Llama-3.2-1B-Instruct"
    assert Trainer("someone/unknown-model").settings.model.name == "someone/unknown-model"  # a hub id
    (tmp_path / "qwen2.5-7b").mkdir()
    monkeypatch.chdir(tmp_path)
    assert Trainer("qwen2.5-7b").settings.model.name == "qwen2.5-7b"  # an existing folder wins


# ---- smart defaults ----------------------------------------------------------------------------
@pytest.mark.parametrize("facts,batch,accumulation,optim,precision,checkpointing", [
    (HardwareFacts.gpu(80), 4, 4, "adamw_torch_fused", "bf16", True),
    (HardwareFacts.gpu(24), 4, 4, "adamw_torch_fused", "bf16", True),
    (HardwareFacts.gpu(16), 2, 8, "paged_adamw_8bit", "bf16", True),
    (HardwareFacts.gpu(8, bf16=False), 1, 16, "paged_adamw_8bit", "fp16", True),
    (CPU, 2, 4, "adamw_torch", "fp32", False),
])
def test_smart_defaults_follow_the_hardware(facts: HardwareFacts, batch: int, accumulation: int, optim: str,
                                            precision: str, checkpointing: bool) -> None:
    d = Trainer("x/y").smart_defaults(facts)
    assert (d.batch_size, d.gradient_accumulation, d.optim, d.precision, d.gradient_checkpointing) == (
        batch, accumulation, optim, precision, checkpointing)
    assert {c.setting for c in d.choices} >= {"batch_size", "gradient_accumulation", "optim", "precision",
                                              "learning_rate", "train_on_responses", "method"}
    assert all(c.why for c in d.choices) and "batch_size" in d.table()


def test_explicit_values_beat_smart_defaults() -> None:
    d = Trainer("x/y", batch_size=3, gradient_accumulation=2, optim="adafactor",
                gradient_checkpointing=False).smart_defaults(HardwareFacts.gpu(8))
    assert (d.batch_size, d.gradient_accumulation, d.optim, d.gradient_checkpointing) == (3, 2, "adafactor", False)
    assert dict((c.setting, c.why) for c in d.choices)["batch_size"] == "set by argument"


def test_train_on_responses_is_auto_off_on_windows_only_by_default() -> None:
    windows = HardwareFacts(device="cpu", os_name="nt")
    d = Trainer("x/y").smart_defaults(windows)
    assert d.train_on_responses is False and "Windows" in dict((c.setting, c.why) for c in d.choices)[
        "train_on_responses"]
    assert Trainer("x/y").smart_defaults(CPU).train_on_responses is True
    assert Trainer("x/y", train_on_responses=True).smart_defaults(windows).train_on_responses is True


def test_batch_size_accumulation_and_packing_change_the_run(tiny_llama: Path, tmp_path: Path) -> None:
    def seen(**kw: object) -> tuple[int, dict]:
        run = Trainer(str(tiny_llama), output_dir=tmp_path / str(len(kw)) / str(sorted(kw.items())), lora_r=4,
                      max_seq_length=512, warmup_ratio=0.0, save_steps=0, **kw).train(DATA, steps=1)
        return run.samples_seen, run.config["resolved"]

    packed, resolved = seen(batch_size=1, gradient_accumulation=1)
    assert packed > 1 and resolved["batch_size"] == "1" and resolved["gradient_accumulation"] == "1"
    assert seen(batch_size=1, gradient_accumulation=1, packing=False)[0] == 1  # one sample per row
    assert seen(batch_size=2, gradient_accumulation=2, packing=False)[0] == 4


def test_max_seq_length_truncates(tiny_llama: Path, tmp_path: Path) -> None:
    run = Trainer(str(tiny_llama), output_dir=tmp_path, lora_r=4, max_seq_length=24, batch_size=1,
                  gradient_accumulation=1, save_steps=0).train(DATA, steps=1)
    assert run.truncated_samples > 0


def test_neftune_noise_changes_training_only(tiny_llama: Path, tmp_path: Path) -> None:
    """The noise reaches the training forward (another first-step loss), never an eval-mode forward."""
    def first_loss(**kw: object) -> float:
        return Trainer(str(tiny_llama), output_dir=tmp_path / str(kw), lora_r=4, max_seq_length=64, batch_size=1,
                       gradient_accumulation=1, save_steps=0, **kw).train(DATA, steps=1).loss_history[0]

    assert first_loss(neftune_noise_alpha=50.0) != first_loss()
    plain, noisy = _load(tiny_llama, tmp_path / "a"), _load(tiny_llama, tmp_path / "b", neftune_noise_alpha=50.0)
    ids = torch.tensor([[1, 5, 9, 13]])
    for loaded in (plain, noisy):
        loaded.model.eval()  # type: ignore[attr-defined]
    with torch.no_grad():
        torch.testing.assert_close(noisy.model(input_ids=ids).logits,  # type: ignore[attr-defined]
                                   plain.model(input_ids=ids).logits)  # type: ignore[attr-defined]
    noisy.model.train()  # type: ignore[attr-defined]
    with torch.no_grad():
        assert not torch.equal(noisy.model(input_ids=ids).logits,  # type: ignore[attr-defined]
                               plain.model(input_ids=ids).logits)  # type: ignore[attr-defined]


# ---- optimizers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,module,cls", [
    ("adamw_torch", "torch.optim.adamw", "AdamW"), ("sgd", "torch.optim.sgd", "SGD"),
    ("adafactor", "transformers.optimization", "Adafactor"), ("adamw_8bit", "bitsandbytes.optim.adamw", "AdamW"),
])
def test_any_transformers_optimizer_name_builds_that_optimizer(name: str, module: str, cls: str) -> None:
    from backpropagate.training.optimizers import create_optimizer

    model = torch.nn.Linear(8, 8)
    optimizer = create_optimizer(model, name, learning_rate=1e-3, weight_decay=0.1)
    assert (type(optimizer).__module__, type(optimizer).__name__) == (module, cls)
    assert optimizer.param_groups[0]["lr"] == 1e-3 and optimizer.param_groups[0]["weight_decay"] == 0.1


def test_the_optimizer_choice_reaches_training(tiny_llama: Path, tmp_path: Path) -> None:
    """Adam's first step moves every trained weight by ~lr; SGD's by lr x gradient (tiny here)."""
    def first_step_b(optim: str) -> float:
        trainer = Trainer(str(tiny_llama), output_dir=tmp_path / optim, optim=optim, lora_r=4, lora_alpha=4,
                          learning_rate=1e-2, warmup_ratio=0.0, lr_scheduler="constant", batch_size=1,
                          gradient_accumulation=1, max_seq_length=128, lora_dropout=0.0, save_steps=0)
        trainer.train(DATA, steps=1)
        layer = _lora_layers(trainer.model)["q_proj"]
        return float(layer.lora_B["default"].weight.detach().abs().max())

    assert first_step_b("adamw_torch") == pytest.approx(1e-2, rel=1e-3)
    assert first_step_b("sgd") < 1e-3


def test_unknown_optimizer_is_a_coded_error_listing_valid_names() -> None:
    with pytest.raises(BackpropagateError) as info:
        Trainer("x/y", optim="adamx")
    assert info.value.code == "INPUT_INVALID_VALUE" and "paged_adamw_8bit" in info.value.message
    from backpropagate.training.optimizers import create_optimizer

    with pytest.raises(BackpropagateError) as info:
        create_optimizer(torch.nn.Linear(2, 2), "lomo", learning_rate=1e-3, weight_decay=0.0)
    assert info.value.code == "INPUT_INVALID_VALUE"


# ---- Unsloth backend: the import fails for real ---------------------------------------------------
def _broken_unsloth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "fake_site" / "unsloth"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('raise RuntimeError("Unsloth: broken nightly build")\n')
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.delitem(sys.modules, "unsloth", raising=False)


def test_unsloth_failure_falls_back_and_says_so_once(tiny_llama: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _broken_unsloth(tmp_path, monkeypatch)
    loaded = _load(tiny_llama, tmp_path, lora_r=4)
    assert loaded.backend == "transformers+peft"
    assert loaded.notes == ["unsloth unavailable (RuntimeError: Unsloth: broken nightly build); falling back to "
                            "transformers + peft"]
    Trainer(str(tiny_llama), output_dir=tmp_path / "o", lora_r=4, batch_size=1, gradient_accumulation=1,
            max_seq_length=128, save_steps=0).train(DATA, steps=1)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "Degradation knobs:" in line]
    assert len(lines) == 1 and "oom_recovery=True" in lines[0] and "unsloth_fallback=True" in lines[0]
    assert "broken nightly build" in lines[0] and "falling back to transformers + peft" in lines[0]


def test_unsloth_not_installed_falls_back_and_use_unsloth_false_skips_it(tiny_llama: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "unsloth", None)  # import unsloth -> ImportError
    assert _load(tiny_llama, tmp_path, lora_r=4).notes == ["unsloth not installed: transformers + peft"]
    assert _load(tiny_llama, tmp_path, lora_r=4, use_unsloth=False).notes == []


def test_unsloth_fallback_false_makes_the_failure_a_coded_error(tiny_llama: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _broken_unsloth(tmp_path, monkeypatch)
    with pytest.raises(BackpropagateError) as info:
        Trainer(str(tiny_llama), output_dir=tmp_path / "o", unsloth_fallback=False).train(DATA, steps=1)
    assert info.value.code == "DEP_UNSLOTH_UNAVAILABLE" and "broken nightly build" in info.value.message
    assert not (tmp_path / "o" / "lora").exists()


# ---- bad input -> coded errors --------------------------------------------------------------------
@pytest.mark.parametrize("kw,code,needle", [
    (dict(lora_preset="turbo"), "INPUT_INVALID_VALUE", "lora_preset"),
    (dict(lora_r=0), "INPUT_INVALID_VALUE", "lora_r"),
    (dict(lora_alpha=0), "INPUT_INVALID_VALUE", "lora_alpha"),
    (dict(lora_dropout=1.0), "INPUT_INVALID_VALUE", "lora_dropout"),
    (dict(lora_dropout=-0.1), "INPUT_INVALID_VALUE", "lora_dropout"),
    (dict(init_lora_weights="olora"), "INPUT_INVALID_VALUE", "init_lora_weights"),
    (dict(mode="half"), "INPUT_INVALID_VALUE", "mode"),
    (dict(mode="full", load_in_4bit=True), "INPUT_INVALID_VALUE", "load_in_4bit"),
    (dict(mode="full", use_dora=True), "INPUT_INVALID_VALUE", "use_dora"),
    (dict(init_lora_weights="loftq"), "INPUT_INVALID_VALUE", "load_in_4bit=True"),
    (dict(init_lora_weights="pissa", load_in_4bit=True), "INPUT_INVALID_VALUE", "pissa"),
    (dict(gradient_checkpointing="sometimes"), "INPUT_INVALID_VALUE", "gradient_checkpointing"),
    (dict(neftune_noise_alpha=0), "INPUT_INVALID_VALUE", "neftune_noise_alpha"),
    (dict(lora_rank=8), "INPUT_UNKNOWN_OPTION", "lora_rank (did you mean lora_r?)"),
])
def test_bad_arguments_are_coded_errors(kw: dict, code: str, needle: str) -> None:
    with pytest.raises(BackpropagateError) as info:
        Trainer("x/y", **kw)
    assert info.value.code == code and needle in info.value.message


def test_full_fine_tuning_of_a_7b_model_is_refused_before_any_download(tmp_path: Path) -> None:
    with pytest.raises(BackpropagateError) as info:
        Trainer("qwen2.5-7b", mode="full", output_dir=tmp_path / "o").train(DATA, steps=1)
    assert info.value.code == "RUNTIME_FULL_FT_MODEL_TOO_LARGE" and "7.6 B" in info.value.message
    assert "LoRA" in info.value.hint and "llama-3.2-1b" in info.value.hint
    assert not (tmp_path / "o" / "model").exists()


def test_qlora_without_bitsandbytes_names_the_extra(tiny_llama: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    with pytest.raises(BackpropagateError) as info:
        Trainer(str(tiny_llama), load_in_4bit=True, output_dir=tmp_path / "o").train(DATA, steps=1)
    assert info.value.code == "DEP_EXTRA_MISSING" and info.value.hint == "pip install backpropagate[qlora]"


def test_a_too_old_peft_is_refused_for_dora() -> None:
    from backpropagate.training.methods import DORA_MIN_PEFT, check_min_version

    assert check_min_version("peft", DORA_MIN_PEFT, "DoRA")  # the installed peft is recent enough
    with pytest.raises(BackpropagateError) as info:
        check_min_version("peft", "999.0", "DoRA (use_dora=True)")  # same check, a bar no peft meets
    assert info.value.code == "DEP_VERSION_TOO_OLD" and "pip install -U 'peft>=999.0'" in info.value.hint


def test_target_modules_that_match_nothing(tiny_llama: Path, tmp_path: Path) -> None:
    with pytest.raises(BackpropagateError) as info:
        _load(tiny_llama, tmp_path, target_modules=["no_such_proj"])
    assert info.value.code == "INPUT_INVALID_VALUE" and "no_such_proj" in info.value.message
