"""Optimizers by transformers' names ("adamw_torch", "paged_adamw_8bit", "adafactor", ...).

The name -> class + keyword mapping is transformers' own (``Trainer.get_optimizer_cls_and_kwargs``),
so every name ``TrainingArguments(optim=...)`` accepts means the same optimizer here. Names whose
optimizer updates weights inside the backward pass (LOMO) or per layer (``*_layerwise``) need
transformers' own Trainer loop and are refused.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from ..errors import BackpropagateError, invalid_value

_NEEDS_TRAINER_LOOP = ("lomo", "adalomo")


def optimizer_names() -> list[str]:
    """Every optimizer name transformers knows."""
    from transformers.training_args import OptimizerNames

    return sorted(o.value for o in OptimizerNames)


def create_optimizer(model: torch.nn.Module, name: str, *, learning_rate: float,
                     weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer ``name`` over the trainable parameters of ``model``, built as transformers does."""
    valid = optimizer_names()
    if name not in valid:
        raise invalid_value("optim", name, "one of " + ", ".join(valid))
    if name in _NEEDS_TRAINER_LOOP or name.endswith("_layerwise"):
        raise invalid_value("optim", name, "an optimizer that steps after the backward pass (this loop "
                            "cannot run LOMO or layer-wise optimizers)")
    from transformers import Trainer, TrainingArguments

    on_cpu = next(model.parameters()).device.type == "cpu"
    args = TrainingArguments(output_dir=tempfile.gettempdir(), optim=name, learning_rate=learning_rate,
                             weight_decay=weight_decay, report_to="none", use_cpu=on_cpu)
    try:
        # transformers annotates PreTrainedModel; it only walks the modules (a peft wrapper works alike).
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)  # type: ignore[arg-type]
    except (ImportError, ValueError) as exc:  # the optimizer's package is not installed
        raise BackpropagateError("DEP_EXTRA_MISSING", f"optim={name!r}: {exc}",
                                 hint="Install the package named in the message, or pick another optim.") from exc
    params: Any = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    for key in ("params", "model", "optimizer_dict"):  # some optimizers build their own groups
        if key in kwargs:
            params = kwargs.pop(key)
    return cls(params, **kwargs)
