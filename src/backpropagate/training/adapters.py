"""Turn a loaded base model into what trains: a LoRA / DoRA / PiSSA / LoftQ adapter, or every weight.

The adapter is always built by peft (``LoraConfig`` + ``get_peft_model``). PiSSA moves the principal
singular components of each base weight into the adapter, so the untouched initial adapter is kept
and the result is saved as a plain LoRA adapter (peft's weight conversion) that loads on the
original base. Full fine-tuning unfreezes every weight and saves a whole model folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ..config import LoraSettings
from ..errors import BackpropagateError
from ..logs import redact
from ..models import peft_wrapping
from ..presets import resolve_target_modules
from .loftq import init_loftq


@dataclass
class Trainable:
    """The model to train and what saving it needs."""
    model: Any
    init_adapter_dir: Path | None = None  # PiSSA: the initial adapter, for the conversion on save
    trainable_params: int = 0
    total_params: int = 0


def _count(model: Any) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute each layer in the backward pass; non-reentrant, so frozen inputs need no grad hook."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_full(model: Any) -> Trainable:
    """Every weight trains."""
    for param in model.parameters():
        param.requires_grad_(True)
    trainable, total = _count(model)
    return Trainable(model, None, trainable, total)


def build_lora(model: Any, lora: LoraSettings, seed: int, *, model_name: str) -> Trainable:
    """Wrap ``model`` in a LoRA (or DoRA) adapter initialised as ``lora.init_weights`` asks."""
    from peft import LoraConfig, get_peft_model

    init: bool | Literal["pissa"] = "pissa" if lora.init_weights == "pissa" else True
    linears = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    targets = lora.target_modules if isinstance(lora.target_modules, str) else tuple(lora.target_modules)
    resolved = resolve_target_modules(targets, linears)
    # peft annotates lora_alpha as int; it only divides by it, and a fractional alpha is the user's to set.
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,  # type: ignore[arg-type]
                        target_modules=resolved if isinstance(resolved, str) else list(resolved),
                        bias="none", task_type="CAUSAL_LM",
                        use_dora=lora.use_dora, init_lora_weights=init)
    torch.manual_seed(seed)
    try:
        with peft_wrapping():
            peft_model = get_peft_model(model, config)
    except ValueError as exc:
        if "not found in the base model" in str(exc) or "Target modules" in str(exc):
            raise BackpropagateError(
                "INPUT_INVALID_VALUE", f"target_modules={lora.target_modules!r} matches no layer: {exc}",
                hint='Use "all-linear" or names such as q_proj, v_proj.') from exc
        raise
    init_dir = None
    if lora.init_weights == "loftq":

        init_loftq(peft_model, model_name)
    elif lora.init_weights == "pissa":
        init_dir = _save_initial_adapter(peft_model)
    trainable, total = _count(peft_model)
    return Trainable(peft_model, init_dir, trainable, total)


def _save_initial_adapter(peft_model: Any) -> Path:
    """Keep the untrained PiSSA adapter in a temporary folder that lives as long as the model."""
    folder = Path(tempfile.mkdtemp(prefix="backpropagate-pissa-init-"))
    config = peft_model.peft_config["default"]
    config.init_lora_weights = True  # reloading the initial adapter must not redo the SVD
    try:
        peft_model.save_pretrained(folder, safe_serialization=True)
    finally:
        config.init_lora_weights = "pissa"
    weakref.finalize(peft_model, shutil.rmtree, folder, True)
    return folder


def save_trained(model: Any, tokenizer: Any, folder: Path, *, init_adapter_dir: Path | None = None,
                 state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write the adapter (or the full model) and the tokenizer into ``folder`` (safetensors).

    ``state_dict`` replaces the model's own tensors: the gathered weights of a sharded (FSDP) model.
    """
    if init_adapter_dir is not None:  # PiSSA -> a plain LoRA adapter (rank 2r) for the original base
        model.save_pretrained(folder, safe_serialization=True,
                              path_initial_model_for_weight_conversion=str(init_adapter_dir))
    elif state_dict is not None:
        model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    else:
        model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    redact_saved_names(folder, _base_names(model, tokenizer))


# Files in which peft and transformers write the base model's id or folder.
_NAMED_FILES = ("adapter_config.json", "config.json", "tokenizer_config.json", "README.md")


def _base_names(model: Any, tokenizer: Any) -> list[str]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = [c.base_model_name_or_path for c in (getattr(model, "peft_config", None) or {}).values()]
    names += [getattr(getattr(base, "config", None), "name_or_path", None), getattr(tokenizer, "name_or_path", None)]
    return [n for n in names if isinstance(n, str) and n]


def redact_saved_names(folder: Path, names: list[str]) -> None:
    """Rewrite a token in the base model's path to its redacted form in the files that name the base.

    Done after saving, not by renaming the base in memory: peft reads the real path while it saves
    (to check the vocabulary), and a later merge in this process still needs it.
    """
    pairs = {name: redact(name) for name in names if redact(name) != name}
    if not pairs:
        return
    for file in (Path(folder) / name for name in _NAMED_FILES):
        if not file.is_file():
            continue
        text = original = file.read_text(encoding="utf-8")
        for raw, redacted in sorted(pairs.items(), key=lambda item: -len(item[0])):
            for ascii_only in (True, False):  # as written into JSON, then verbatim
                text = text.replace(json.dumps(raw, ensure_ascii=ascii_only)[1:-1],
                                    json.dumps(redacted, ensure_ascii=ascii_only)[1:-1])
            text = text.replace(raw, redacted)
        if file.suffix == ".md":  # the card's YAML may quote the name its own way
            text = redact(text)
        if text != original:
            file.write_text(text, encoding="utf-8")
