"""Model presets (short names for the pinned models) and LoRA presets ("quality", "fast").

Kept free of heavy imports: the CLI lists presets without loading torch. The architecture figures
are the real models' ``config.json`` values (for Qwen-3.5-4B, its ``text_config``); the memory plan
uses them to estimate a run offline, without downloading anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BackpropagateError


@dataclass(frozen=True)
class ModelPreset:
    """One pinned model: where it lives, its licence, and the shape the memory plan needs."""

    key: str  # the short name: ``backprop train --model qwen2.5-7b``
    title: str  # how the README names it
    hub_id: str
    license: str
    vram_gb: int  # approximate card size for a LoRA/QLoRA run (the README's figure)
    template: str  # chat-template family (a family of backpropagate.testing as well)
    model_type: str  # transformers model_type of the text model
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # other config.json keys that change the shape
    architecture: str = ""  # config.architectures[0] of the real checkpoint
    tokenizer: str = ""  # its tokenizer as llama.cpp names it (tokenizer.ggml.pre, or "llama-spm")

    def config_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``transformers.AutoConfig.for_model(self.model_type, ...)``."""
        kwargs: dict[str, Any] = dict(
            hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads, vocab_size=self.vocab_size,
            tie_word_embeddings=self.tie_word_embeddings, **self.extra)
        if self.head_dim is not None:
            kwargs["head_dim"] = self.head_dim
        return kwargs


MODEL_PRESETS: tuple[ModelPreset, ...] = (
    ModelPreset("qwen3.5-4b", "Qwen-3.5-4B", "Qwen/Qwen3.5-4B", "Apache 2.0", 8, "qwen3", "qwen3_5_text",
                2560, 9216, 32, 16, 4, 248320, True, head_dim=256,
                notes="Recommended default for sub-5B. Hybrid attention (3 linear : 1 full); the "
                      "linear-attention head counts are transformers' Qwen3.5 defaults.",
                architecture="Qwen3_5ForCausalLM", tokenizer="qwen35"),
    ModelPreset("phi-4-mini-3.8b", "Phi-4-mini-3.8B", "microsoft/Phi-4-mini-instruct", "MIT", 8, "phi3",
                "phi3", 3072, 8192, 32, 24, 8, 200064, True,
                notes="Strong on reasoning / math / code.", extra={"partial_rotary_factor": 0.75},
                architecture="Phi3ForCausalLM", tokenizer="gpt-4o"),
    ModelPreset("smollm3-3b", "SmolLM3-3B", "HuggingFaceTB/SmolLM3-3B", "Apache 2.0", 6, "smollm3",
                "smollm3", 2048, 11008, 36, 16, 4, 128256, True, notes="Fully open recipe; 64K context.",
                architecture="SmolLM3ForCausalLM", tokenizer="llama-bpe"),
    ModelPreset("qwen2.5-7b", "Qwen 2.5 7B", "Qwen/Qwen2.5-7B-Instruct", "Apache 2.0", 12, "qwen2", "qwen2",
                3584, 18944, 28, 28, 4, 152064, False, notes="The default model.",
                architecture="Qwen2ForCausalLM", tokenizer="qwen2"),
    ModelPreset("qwen2.5-3b", "Qwen 2.5 3B", "Qwen/Qwen2.5-3B-Instruct", "Qwen-Research", 8, "qwen2",
                "qwen2", 2048, 11008, 36, 16, 2, 151936, True,
                notes="Research licence: read the Qwen terms before commercial use.",
                architecture="Qwen2ForCausalLM", tokenizer="qwen2"),
    ModelPreset("llama-3.2-3b", "Llama 3.2 3B", "meta-llama/Llama-3.2-3B-Instruct", "Llama 3.2 Community",
                8, "llama", "llama", 3072, 8192, 28, 24, 8, 128256, True, head_dim=128,
                notes="Gated on the Hub: accept the licence, then `hf auth login`.",
                architecture="LlamaForCausalLM", tokenizer="llama-bpe"),
    ModelPreset("llama-3.2-1b", "Llama 3.2 1B", "meta-llama/Llama-3.2-1B-Instruct", "Llama 3.2 Community",
                6, "llama", "llama", 2048, 8192, 16, 32, 8, 128256, True, head_dim=64,
                notes="For quick experiments on small cards. Gated on the Hub.",
                architecture="LlamaForCausalLM", tokenizer="llama-bpe"),
    ModelPreset("mistral-7b", "Mistral 7B", "mistralai/Mistral-7B-Instruct-v0.3", "Apache 2.0", 12, "mistral",
                "mistral", 4096, 14336, 32, 32, 8, 32768, False, notes="[INST] chat template.",
                architecture="MistralForCausalLM", tokenizer="llama-spm"),
)


def _normal(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_NAME: dict[str, ModelPreset] = {}
for _p in MODEL_PRESETS:
    for _alias in (_p.key, _p.title):
        _BY_NAME[_normal(_alias)] = _p


def find_model_preset(name: str) -> ModelPreset | None:
    """The preset a short name or title refers to (case, spaces, dots and dashes ignored), or None."""
    return _BY_NAME.get(_normal(name)) if name else None


def preset_for_hub_id(hub_id: str) -> ModelPreset | None:
    return next((p for p in MODEL_PRESETS if p.hub_id.lower() == hub_id.lower()), None)


def resolve_model_name(name: str) -> str:
    """A preset short name becomes its hub id; an existing local folder or any other id passes through.

    Unknown names are not an error here: they are hub ids, and a typo fails at load time with
    DEP_MODEL_LOAD_FAILED.
    """
    preset = find_model_preset(name)
    if preset is None or Path(name).expanduser().exists():
        return name
    return preset.hub_id


@dataclass(frozen=True)
class LoraPreset:
    """Adapter shape and learning-rate factor; explicit arguments and env vars override each value."""

    name: str
    r: int
    alpha: float
    target_modules: str | tuple[str, ...]
    lr_multiplier: float
    why: str


BASE_LEARNING_RATE = 2e-4

LORA_PRESETS: dict[str, LoraPreset] = {
    "quality": LoraPreset("quality", 256, 512, "all-linear", 10.0,
                          "rank 256 on every linear layer matches full fine-tuning on most post-training "
                          "tasks (Biderman 2024); LoRA wants ~10x the full fine-tuning learning rate "
                          "(Thinking Machines 2025, LoRA Without Regret)"),
    "fast": LoraPreset("fast", 16, 32, ("q_proj", "v_proj"), 1.0,
                       "rank 16 on q_proj/v_proj: the small v1.2 footprint, base learning rate"),
}


#: Where a family fuses or renames a projection, the modules that play its part: Phi-3/Phi-4 fuse
#: q/k/v into ``qkv_proj`` and gate/up into ``gate_up_proj``; Qwen3.5's linear-attention layers project
#: q/k/v together in ``in_proj_qkv`` (its full-attention layers keep ``q_proj``/``v_proj``).
PROJECTION_EQUIVALENTS: dict[str, tuple[str, ...]] = {
    "q_proj": ("qkv_proj", "in_proj_qkv"), "k_proj": ("qkv_proj", "in_proj_qkv"),
    "v_proj": ("qkv_proj", "in_proj_qkv"), "gate_proj": ("gate_up_proj",), "up_proj": ("gate_up_proj",)}


def resolve_target_modules(targets: str | tuple[str, ...] | list[str],
                           module_names: list[str]) -> str | tuple[str, ...]:
    """``targets`` in the names this model uses, so a preset means the same layers on every family.

    A name keeps its meaning where the model has it; its fused or renamed equivalents that the model
    has are added (``q_proj`` on Phi-3 -> ``qkv_proj``; on Qwen3.5 -> ``q_proj`` + ``in_proj_qkv``).
    ``"all-linear"`` and names the model lacks without an equivalent pass through (peft then refuses).
    """
    if isinstance(targets, str):
        return targets
    leaves = {name.rsplit(".", 1)[-1] for name in module_names}
    resolved: list[str] = []
    for target in targets:
        present = [alt for alt in PROJECTION_EQUIVALENTS.get(target, ()) if alt in leaves]
        if target in leaves or not present:
            resolved.append(target)
        resolved += present
    return tuple(dict.fromkeys(resolved))


def lora_preset(name: str) -> LoraPreset:
    """The named LoRA preset; INPUT_INVALID_VALUE listing the valid names otherwise."""
    try:
        return LORA_PRESETS[name]
    except (KeyError, TypeError):
        raise BackpropagateError(
            "INPUT_INVALID_VALUE", f"lora_preset={name!r} is unknown; valid presets: "
            + ", ".join(LORA_PRESETS) + ".") from None


def presets_table() -> list[dict[str, Any]]:
    """The model presets as plain rows (for ``backprop info --presets`` and docs)."""
    return [{"name": p.key, "title": p.title, "hub_id": p.hub_id, "license": p.license,
             "vram_gb": p.vram_gb, "template": p.template, "notes": p.notes} for p in MODEL_PRESETS]
