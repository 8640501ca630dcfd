"""Load what a run trains: pick the backend (Unsloth or transformers + peft), load, build the method.

The order is cheap checks first (method combination, installed extras, full fine-tuning size from the
config alone), then weights. Every degradation (Unsloth missing or broken, or not used for a method)
becomes one note for the start-up ``Degradation knobs`` line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import BackpropagateError
from ..models import load_model, load_tokenizer
from ..plan import check_full_finetune_size
from .adapters import build_full, build_lora, enable_gradient_checkpointing
from .defaults import RunDefaults
from .methods import check_dependencies, check_method
from .unsloth_backend import load_with_unsloth, unsupported_reason


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    backend: str  # "unsloth" or "transformers+peft"
    notes: list[str] = field(default_factory=list)
    init_adapter_dir: Path | None = None
    trainable_params: int = 0
    total_params: int = 0


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def try_unsloth(settings: Settings, defaults: RunDefaults) -> tuple[LoadedModel | None, list[str]]:
    """The Unsloth-built model, or None and the reason it was not used.

    A failure (import or loader) with ``unsloth_fallback=False`` is DEP_UNSLOTH_UNAVAILABLE.
    """
    if not settings.model.use_unsloth:
        return None, []
    reason = unsupported_reason(settings)
    if reason is not None:
        return None, [f"unsloth not used: {reason}"]
    try:
        model, tokenizer = load_with_unsloth(settings, defaults)
    except Exception as exc:  # noqa: BLE001 - any Unsloth failure is a degradation or a coded error
        if isinstance(exc, BackpropagateError):
            raise
        if not settings.model.unsloth_fallback:
            raise BackpropagateError("DEP_UNSLOTH_UNAVAILABLE",
                                     f"Unsloth could not load ({_short(exc)}) and unsloth_fallback=False.") from exc
        if isinstance(exc, ModuleNotFoundError) and exc.name == "unsloth":
            return None, ["unsloth not installed: transformers + peft"]
        return None, [f"unsloth unavailable ({_short(exc)}); falling back to transformers + peft"]
    params = list(model.parameters())
    return LoadedModel(model, tokenizer, "unsloth", trainable_params=sum(p.numel() for p in params if
                                                                         p.requires_grad),
                       total_params=sum(p.numel() for p in params)), []


def load_for_training(settings: Settings, defaults: RunDefaults) -> LoadedModel:
    """Tokenizer + model ready to train, as the settings and the smart defaults ask.

    The smart defaults' fitted values (a 4-bit base, a lowered LoRA rank) are applied here, once.
    """
    import torch

    settings = defaults.apply(settings)
    check_method(settings)
    check_dependencies(settings, defaults.optim)
    full = settings.training.mode == "full"
    if full:
        check_full_finetune_size(settings.model.name, trust_remote_code=settings.model.trust_remote_code)
    loaded, notes = try_unsloth(settings, defaults)
    if loaded is not None:
        return with_embedding_noise(loaded, settings.training.neftune_noise_alpha)
    device = torch.device("cuda" if defaults.device == "cuda" else "cpu")
    tokenizer = load_tokenizer(settings.model)
    base = load_model(settings.model, device, defaults.torch_dtype)
    if defaults.gradient_checkpointing:
        enable_gradient_checkpointing(base)
    if full:
        trainable = build_full(base)
    else:
        trainable = build_lora(base, settings.lora, settings.training.seed, model_name=settings.model.name)
    loaded = LoadedModel(trainable.model, tokenizer, "transformers+peft", notes, trainable.init_adapter_dir,
                         trainable.trainable_params, trainable.total_params)
    return with_embedding_noise(loaded, settings.training.neftune_noise_alpha)


def with_embedding_noise(loaded: LoadedModel, alpha: float | None) -> LoadedModel:
    """NEFTune: transformers' hook adds the noise to the input embeddings in training mode only, so held-out
    scores, answers and the saved adapter are those of the plain model."""
    if alpha:
        from transformers.integrations.neftune import neftune_post_forward_hook

        embeddings = loaded.model.get_input_embeddings()
        embeddings.neftune_noise_alpha = alpha
        embeddings.register_forward_hook(neftune_post_forward_hook)
    return loaded
