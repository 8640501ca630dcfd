"""Load the tokenizer or reference model a data tool is pointed at, with the loader's coded errors.

The data tools accept either an object already in memory (a tokenizer, or a model plus its tokenizer) or
a hub id / local folder, which is loaded exactly like the training model (``trust_remote_code`` off
unless asked), so a name that cannot load fails as ``DEP_MODEL_LOAD_FAILED``.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelSettings
from ..models import load_model, load_tokenizer, pick_device, pick_dtype


def resolve_tokenizer(tokenizer: Any, *, trust_remote_code: bool = False) -> Any:
    """``tokenizer`` itself, or the tokenizer loaded from a hub id / folder name."""
    if not isinstance(tokenizer, str):
        return tokenizer

    return load_tokenizer(ModelSettings(name=tokenizer, trust_remote_code=trust_remote_code))


def load_reference_model(name: str, *, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) of a causal LM for scoring: eval mode, on the GPU when there is one."""

    settings = ModelSettings(name=name, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(settings)
    device = pick_device()
    model = load_model(settings, device, pick_dtype(device))
    return model.eval(), tokenizer
