"""LoRA presets mean the same layers on every family: built by peft on each family's real architecture."""

from __future__ import annotations

import pytest

from backpropagate.config import LoraSettings
from backpropagate.presets import LORA_PRESETS, resolve_target_modules

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, pad_token_id=0)
# model_type -> extra config keys that make the tiny model look like the real family
ARCHITECTURES = {
    "llama": {"head_dim": 16}, "mistral": {"head_dim": 16}, "qwen2": {}, "qwen3": {"head_dim": 16},
    "smollm3": {}, "phi3": {"partial_rotary_factor": 0.75},
    "gemma3_text": {"head_dim": 16, "query_pre_attn_scalar": 16},
    "qwen3_5_text": {"head_dim": 16, "num_hidden_layers": 4, "linear_num_key_heads": 2,
                     "linear_num_value_heads": 4, "linear_key_head_dim": 16, "linear_value_head_dim": 16},
}
# What "fast" adapts (the attention query/value projections) and what "quality" adds, per family.
FAST = {"phi3": {"qkv_proj"}, "qwen3_5_text": {"q_proj", "v_proj", "in_proj_qkv"}}
FUSED_MLP = {"phi3": {"gate_up_proj", "down_proj"}}


def _model(model_type: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **{**TINY, **ARCHITECTURES[model_type]})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def _adapted(peft_model) -> set[str]:
    return {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in peft_model.named_parameters()
            if ".lora_A." in name}


@pytest.mark.parametrize("model_type", list(ARCHITECTURES))
def test_presets_resolve_on_every_family(model_type: str) -> None:
    from backpropagate.training.adapters import build_lora

    for preset in LORA_PRESETS.values():
        model = _model(model_type)
        targets = preset.target_modules
        lora = LoraSettings(r=4, alpha=8, dropout=0.0,
                            target_modules=targets if isinstance(targets, str) else list(targets))
        adapted = _adapted(build_lora(model, lora, seed=0, model_name="tiny").model)
        if preset.name == "fast":
            assert adapted == FAST.get(model_type, {"q_proj", "v_proj"}), (model_type, adapted)
        else:  # all-linear: attention and MLP projections alike, never the output head
            assert "lm_head" not in adapted
            mlp = FUSED_MLP.get(model_type, {"gate_proj", "up_proj", "down_proj"})
            assert mlp <= adapted, (model_type, adapted)


def test_resolution_keeps_names_the_model_has() -> None:
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.0.mlp.up_proj"]
    assert resolve_target_modules(("q_proj", "v_proj"), names) == ("q_proj", "v_proj")
    assert resolve_target_modules("all-linear", names) == "all-linear"
    fused = ["model.layers.0.self_attn.qkv_proj", "model.layers.0.mlp.gate_up_proj"]
    assert resolve_target_modules(("q_proj", "v_proj", "up_proj"), fused) == ("qkv_proj", "gate_up_proj")
    # a name with no equivalent passes through, so peft refuses it with the user's own spelling
    assert resolve_target_modules(("c_attn",), names) == ("c_attn",)


def test_unknown_target_is_a_coded_error() -> None:
    from backpropagate.errors import BackpropagateError
    from backpropagate.training.adapters import build_lora

    lora = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["not_a_layer"])
    with pytest.raises(BackpropagateError) as info:
        build_lora(_model("phi3"), lora, seed=0, model_name="tiny")
    assert info.value.code == "INPUT_INVALID_VALUE" and "not_a_layer" in info.value.message
