"""SLAO continual merging (Qiao & Mahdavi 2025, arXiv:2512.23017): the pure tensor math.

Per adapted layer the adapter is dW = s * B @ A with A (r x in) and B (out x r).

* Run 1 is ordinary LoRA; afterwards merged := (A_1, B_1).
* Before run i >= 2: QR-decompose A_{ft,i-1}^T = Q R in fp32, flip signs so diag(R) >= 0, and start
  from A_init = Q^T (orthonormal rows) and B_init = B_{ft,i-1} -- the previous *fine-tuned* B, not the
  merged one.
* After run i: A_merged = A_{ft,i} (the new A replaces the old) and
  B_merged = B_merged + lambda(i) * (B_{ft,i} - B_merged), with lambda(i) = 1/sqrt(i) by default.

R is deliberately not folded into B: the paper does not do it. Nothing here touches peft or files, so
every formula is unit-tested against hand computations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from ..errors import BackpropagateError

LambdaSchedule = str | float | Callable[[int], float]
SCHEDULES = ("1/sqrt(i)", "1/i")


def merge_weight(i: int, schedule: LambdaSchedule = "1/sqrt(i)") -> float:
    """lambda(i) for run ``i`` (counted from 1): "1/sqrt(i)" (the paper's), "1/i", a constant, or a callable."""
    if i < 1:
        raise ValueError(f"run index starts at 1, got {i}")
    if callable(schedule):
        value = float(schedule(i))
    elif isinstance(schedule, int | float) and not isinstance(schedule, bool):
        value = float(schedule)
    elif schedule == "1/sqrt(i)":
        value = 1.0 / math.sqrt(i)
    elif schedule == "1/i":
        value = 1.0 / i
    else:
        raise BackpropagateError("INPUT_INVALID_VALUE",
                                 f"lambda schedule {schedule!r} is unknown: use {', '.join(SCHEDULES)}, "
                                 "a number in (0, 1] or a function of i.")
    if not 0.0 < value <= 1.0 or not math.isfinite(value):
        raise BackpropagateError("INPUT_INVALID_VALUE", f"lambda({i}) = {value} is outside (0, 1].")
    return value


def orthonormal_a(a_prev: torch.Tensor) -> torch.Tensor:
    """A_init = Q^T from the reduced QR of A_prev^T, signs fixed so that diag(R) >= 0.

    Computed in fp32 and returned in ``a_prev``'s dtype; the rows of the result are orthonormal.
    """
    q, r = torch.linalg.qr(a_prev.detach().to(torch.float32).T, mode="reduced")
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return (q * signs).T.contiguous().to(a_prev.dtype)


def merge_b(b_merged: torch.Tensor, b_ft: torch.Tensor, weight: float) -> torch.Tensor:
    """B_merged + weight * (B_ft - B_merged), in fp32, returned in B_merged's dtype."""
    merged = b_merged.to(torch.float32)
    return (merged + weight * (b_ft.to(torch.float32) - merged)).to(b_merged.dtype)


Pair = tuple[torch.Tensor, torch.Tensor]  # (A, B)


@dataclass
class SlaoState:
    """What a campaign carries between runs; checkpointed together so a resume uses the right lambda."""

    runs_merged: int = 0
    merged: dict[str, Pair] = field(default_factory=dict)
    last_finetuned: dict[str, Pair] = field(default_factory=dict)
    schedule: LambdaSchedule = "1/sqrt(i)"


def next_init(state: SlaoState) -> dict[str, Pair]:
    """Initial (A, B) per layer for the next run: empty for run 1 (plain LoRA init)."""
    if state.runs_merged == 0:
        return {}
    return {name: (orthonormal_a(a), b.clone()) for name, (a, b) in state.last_finetuned.items()}


def merge_run(state: SlaoState, finetuned: Mapping[str, Pair]) -> SlaoState:
    """Fold the fine-tuned adapter of the next run into the merged one; returns a new state.

    Raises SLAO_MERGE_DIVERGED (leaving ``state`` untouched) if the result is not finite.
    """
    i = state.runs_merged + 1
    if state.runs_merged and set(finetuned) != set(state.merged):
        missing = sorted(set(state.merged) ^ set(finetuned))[:5]
        raise BackpropagateError("SLAO_INCOMPATIBLE_RUNS",
                                 f"run {i} adapts different layers than the earlier runs: {missing}.")
    weight = merge_weight(i, state.schedule)
    merged: dict[str, Pair] = {}
    for name, (a_ft, b_ft) in finetuned.items():
        if i == 1:
            merged[name] = (a_ft.detach().clone(), b_ft.detach().clone())
        else:
            _, b_old = state.merged[name]
            if b_old.shape != b_ft.shape:
                raise BackpropagateError("SLAO_INCOMPATIBLE_RUNS",
                                         f"{name}: B has shape {tuple(b_ft.shape)} in run {i} but "
                                         f"{tuple(b_old.shape)} before (rank changed?).")
            merged[name] = (a_ft.detach().clone(), merge_b(b_old, b_ft.detach(), weight))
        if not all(torch.isfinite(t).all() for t in merged[name]):
            raise BackpropagateError("SLAO_MERGE_DIVERGED",
                                     f"merging run {i} produced NaN/Inf in {name}; the previous merged "
                                     "adapter is kept.")
    last = {name: (a.detach().clone(), b.detach().clone()) for name, (a, b) in finetuned.items()}
    return SlaoState(runs_merged=i, merged=merged, last_finetuned=last, schedule=state.schedule)
