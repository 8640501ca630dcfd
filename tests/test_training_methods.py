"""DoRA, PiSSA, LoftQ, QLoRA and full fine-tuning, for real on a tiny model: the loss falls, and the saved
result reloads (the way a user would load it) and reproduces the trained model's logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backpropagate import Trainer
from backpropagate.demo import quickstart_path

FAST = dict(lora_r=8, lora_alpha=16, batch_size=2, gradient_accumulation=1, max_seq_length=256,
            warmup_ratio=0.0, lr_scheduler="constant", learning_rate=1e-2, save_steps=0)


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits.float()


def _probe(path: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return tok("What is Python? A programming language.", return_tensors="pt")["input_ids"]


def _base(path: Path, *, four_bit: bool = False) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    from backpropagate.models import four_bit_config

    extra = {"quantization_config": four_bit_config(torch.float32)} if four_bit else {}
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **extra)


@pytest.mark.parametrize("method", ["dora", "pissa", "qlora", "loftq", "full"])
def test_method_trains_and_the_saved_result_reproduces_the_logits(method: str, tiny_llama: Path,
                                                                 tmp_path: Path) -> None:
    args = {"dora": dict(use_dora=True), "pissa": dict(init_lora_weights="pissa"),
            "qlora": dict(load_in_4bit=True), "loftq": dict(load_in_4bit=True, init_lora_weights="loftq"),
            "full": dict(mode="full", learning_rate=1e-3)}[method]
    trainer = Trainer(str(tiny_llama), output_dir=tmp_path / "out", **{**FAST, **args})
    run = trainer.train(str(quickstart_path()), steps=6)
    assert run.final_loss < run.loss_history[0] - 0.05, run.loss_history

    ids = _probe(tiny_llama)
    trained = _logits(trainer.model, ids)
    saved = Path(run.output_path)
    if method == "full":
        from transformers import AutoModelForCausalLM

        assert saved.name == "model" and (saved / "model.safetensors").is_file()
        assert not (saved / "adapter_config.json").exists()
        reloaded = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
    else:
        from peft import PeftModel

        config = json.loads((saved / "adapter_config.json").read_text())
        assert config["use_dora"] is (method == "dora")
        if method == "pissa":  # converted to a plain LoRA adapter of rank 2r for the original base
            assert config["r"] == 16 and config["init_lora_weights"] is True
        reloaded = PeftModel.from_pretrained(_base(tiny_llama, four_bit=method in ("qlora", "loftq")), saved)
    torch.testing.assert_close(_logits(reloaded, ids), trained, atol=2e-4, rtol=2e-4)
    assert not torch.allclose(_logits(_base(tiny_llama), ids), trained, atol=1e-3)  # training changed it


def test_method_internals_are_what_was_asked(tiny_llama: Path, tmp_path: Path) -> None:
    """DoRA adds magnitude vectors, QLoRA really holds 4-bit weights, full mode unfreezes everything."""
    from bitsandbytes.nn import Linear4bit

    from backpropagate.training.loader import load_for_training

    def load(**kw: object) -> object:
        trainer = Trainer(str(tiny_llama), output_dir=tmp_path, **{**FAST, **kw})
        return load_for_training(trainer.settings, trainer.smart_defaults())

    dora = load(use_dora=True).model
    assert any("lora_magnitude_vector" in n for n, _ in dora.named_parameters())
    qlora = load(load_in_4bit=True)
    layers = [m for m in qlora.model.modules() if isinstance(m, Linear4bit)]
    assert layers and all(m.weight.quant_type == "nf4" for m in layers)
    assert all(m.weight.quant_state.nested for m in layers)  # double quantization
    full = load(mode="full")
    assert full.trainable_params == full.total_params > 0
    lora = load()
    assert 0 < lora.trainable_params < lora.total_params


def test_loftq_starts_closer_to_the_full_precision_model_than_plain_qlora(tiny_llama: Path,
                                                                         tmp_path: Path) -> None:
    from backpropagate.training.loader import load_for_training

    ids = _probe(tiny_llama)
    reference = _logits(_base(tiny_llama), ids)

    def start_error(**kw: object) -> float:
        trainer = Trainer(str(tiny_llama), output_dir=tmp_path, **{**FAST, "lora_r": 32, "lora_alpha": 64,
                                                                   "load_in_4bit": True, **kw})
        model = load_for_training(trainer.settings, trainer.smart_defaults()).model
        return float((_logits(model, ids) - reference).abs().mean())

    plain, loftq = start_error(), start_error(init_lora_weights="loftq")
    assert loftq < 0.7 * plain, (loftq, plain)


def test_gradient_checkpointing_gives_the_same_step(tiny_llama: Path, tmp_path: Path) -> None:
    losses = []
    for i, checkpointing in enumerate((False, True)):
        run = Trainer(str(tiny_llama), output_dir=tmp_path / str(i), gradient_checkpointing=checkpointing,
                      **FAST).train(str(quickstart_path()), steps=2)
        losses.append(run.loss_history)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
