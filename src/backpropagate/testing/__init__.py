"""Test helpers: tiny, offline, deterministic checkpoints of real model families.

``build_tiny_model("qwen3")`` gives a folder that loads with the Auto classes like a real Qwen3
checkpoint (config class, special tokens, chat template) but has a 1024-token vocabulary and a few
thousand parameters, so the whole pipeline can be tested on a CPU without downloads.
"""

from backpropagate.testing.factory import (
    FAMILIES,
    FAMILY_SPECS,
    SIZES,
    VOCAB_SIZE,
    FamilySpec,
    SizeSpec,
    build_tiny_model,
    build_tiny_tokenizer,
    default_cache_dir,
    family_spec,
)
from backpropagate.testing.templates import CHAT_TEMPLATES, chat_template

__all__ = [
    "CHAT_TEMPLATES",
    "FAMILIES",
    "FAMILY_SPECS",
    "SIZES",
    "VOCAB_SIZE",
    "FamilySpec",
    "SizeSpec",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "chat_template",
    "default_cache_dir",
    "family_spec",
]
