"""The optional Unsloth loader (CUDA only): the same model and adapter, built by Unsloth's fast kernels.

Everything Unsloth raises reaches the caller unchanged; :mod:`backpropagate.training.loader` decides
between falling back to transformers + peft (``unsloth_fallback=True``, said once at start-up) and a
coded error. Unsloth is only asked for what it builds the same way peft does: a LoRA or QLoRA adapter
with the default initialisation, or full fine-tuning; DoRA, PiSSA and LoftQ go to peft.
"""

from __future__ import annotations

from typing import Any

from ..config import Settings
from .defaults import RunDefaults

# Unsloth wants explicit module names; "all-linear" means these for the Llama-style families it patches.
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def unsupported_reason(settings: Settings) -> str | None:
    """Why this configuration is built by peft even when Unsloth works, or None."""
    lora = settings.lora
    if settings.training.mode == "lora" and lora.use_dora:
        return "DoRA is built by peft"
    if lora.init_weights != "default":
        return f"init_lora_weights={lora.init_weights} is built by peft"
    return None


def load_with_unsloth(settings: Settings, defaults: RunDefaults) -> tuple[Any, Any]:
    """Model (with its LoRA adapter unless mode="full") and tokenizer through ``FastLanguageModel``."""
    from unsloth import FastLanguageModel

    full = settings.training.mode == "full"
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=settings.model.name, max_seq_length=settings.training.max_seq_length,
        dtype=defaults.torch_dtype, load_in_4bit=settings.model.load_in_4bit, full_finetuning=full,
        trust_remote_code=settings.model.trust_remote_code)
    if not full:
        lora = settings.lora
        targets = ALL_LINEAR if lora.target_modules == "all-linear" else list(lora.target_modules)
        model = FastLanguageModel.get_peft_model(
            model, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
            bias="none", use_gradient_checkpointing="unsloth" if defaults.gradient_checkpointing else False,
            random_state=settings.training.seed)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = False
    return model, tokenizer
