"""Read and write the per-layer LoRA (A, B) pairs of a live peft model, for SLAO's merges.

peft stores A as ``lora_A[adapter].weight`` (r x in) and B as ``lora_B[adapter].weight`` (out x r); the
pair is keyed by the wrapped module's dotted name, so names survive a save/load round trip.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .slao import Pair


def _lora_modules(model: torch.nn.Module, adapter: str) -> dict[str, torch.nn.Module]:
    found = {}
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, torch.nn.ModuleDict) and adapter in lora_a:
            found[name] = module
    return found


def _weight(module: torch.nn.Module, side: str, adapter: str) -> torch.Tensor:
    """``module.lora_A[adapter].weight`` (``side`` "lora_A") or ``module.lora_B[adapter].weight``."""
    weight = getattr(module, side)[adapter].weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{side}[{adapter!r}] of {type(module).__name__} has no weight tensor")
    return weight


def lora_pairs(model: torch.nn.Module, adapter: str = "default") -> dict[str, Pair]:
    """Copies of every adapted layer's (A, B)."""
    return {name: (_weight(m, "lora_A", adapter).detach().clone(), _weight(m, "lora_B", adapter).detach().clone())
            for name, m in _lora_modules(model, adapter).items()}


def set_lora_pairs(model: torch.nn.Module, pairs: Mapping[str, Pair], adapter: str = "default") -> None:
    """Overwrite (A, B) in place for the named layers; every adapted layer must be given."""
    modules = _lora_modules(model, adapter)
    if set(modules) != set(pairs):
        missing = sorted(set(modules) ^ set(pairs))[:5]
        raise KeyError(f"LoRA layers do not match: {missing}")
    with torch.no_grad():
        for name, (a, b) in pairs.items():
            _weight(modules[name], "lora_A", adapter).copy_(a)
            _weight(modules[name], "lora_B", adapter).copy_(b)
