"""Load a base model and tokenizer (hub id or local folder) and wrap it with a LoRA adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import LoraSettings, ModelSettings
from ..errors import BackpropagateError
from ..logs import redact


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def pick_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU supports it, fp32 on the CPU (CPU half precision is slow and inexact)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or Path(name).exists()


def load_tokenizer(settings: ModelSettings) -> Any:
    from transformers import AutoTokenizer

    name = settings.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=settings.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - every loader failure becomes one coded error
        raise _load_error(name, exc) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(settings: ModelSettings, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    name = settings.name
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, trust_remote_code=settings.trust_remote_code)
    except Exception as exc:  # noqa: BLE001
        raise _load_error(name, exc) from exc
    model.config.use_cache = False  # training: a KV cache would also break packed attention
    return model.to(device)


def _load_error(name: str, exc: Exception) -> BackpropagateError:
    expanded = Path(name).expanduser()
    if _looks_like_path(name) and not expanded.exists():
        return BackpropagateError("DEP_MODEL_LOAD_FAILED", f"model folder {name!r} does not exist.",
                                  hint="Check the path, or pass a hub id such as Qwen/Qwen2.5-7B-Instruct.",
                                  retryable=False)
    detail = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return BackpropagateError("DEP_MODEL_LOAD_FAILED", f"could not load model {name!r}: {detail[:300]}")


def apply_lora(model: Any, lora: LoraSettings, seed: int) -> Any:
    """Wrap ``model`` in a trainable LoRA adapter; the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(seed)
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        if "not found in the base model" in str(exc) or "Target modules" in str(exc):
            raise BackpropagateError(
                "INPUT_INVALID_VALUE", f"target_modules={lora.target_modules!r} matches no layer: {exc}",
                hint='Use "all-linear" or names such as q_proj, v_proj.') from exc
        raise
