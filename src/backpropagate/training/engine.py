"""The training loop, readable top to bottom: data stream -> micro-batches -> optimizer steps.

One optimizer step = ``gradient_accumulation`` micro-batches of ``batch_size`` packed rows. The loss is
the token-weighted mean over every target token of the step, so accumulation and packing never change
what is being minimised.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.packing import PackedRow, collate, forward_packed, pack
from ..data.templates import IGNORE_INDEX, TokenizedSample
from ..errors import BackpropagateError
from .callbacks import TrainingCallback


@dataclass(frozen=True)
class LoopConfig:
    steps: int
    batch_size: int
    gradient_accumulation: int
    learning_rate: float
    max_seq_length: int
    packing: bool = True
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42


class DataStream:
    """Packed rows in a seeded order, epoch after epoch; each epoch is re-shuffled with ``seed + epoch``."""

    def __init__(self, samples: Sequence[TokenizedSample], max_seq_length: int, *, packing: bool,
                 seed: int) -> None:
        self.samples = samples
        self.max_seq_length = max_seq_length
        self.packing = packing
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self.truncated = 0
        self._rows = self._plan(0)
        if not self._rows:
            raise BackpropagateError("INPUT_DATASET_EMPTY", "no sample has any tokens to train on.")

    def _plan(self, epoch: int) -> list[PackedRow]:
        plan = pack(self.samples, self.max_seq_length, packing=self.packing, seed=self.seed + epoch)
        if epoch == 0:
            self.truncated = plan.truncated
        return plan.rows

    def take(self, n: int) -> tuple[list[PackedRow], bool]:
        """The next ``n`` rows, and whether an epoch ended while taking them."""
        rows, wrapped = [], False
        while len(rows) < n:
            if self.position == len(self._rows):
                self.epoch += 1
                self.position = 0
                self._rows = self._plan(self.epoch)
                wrapped = True
            rows.append(self._rows[self.position])
            self.position += 1
        return rows, wrapped


@dataclass
class LoopResult:
    loss_history: list[float] = field(default_factory=list)
    samples_seen: int = 0
    label_tokens: int = 0
    truncated: int = 0


def build_optimizer(model: torch.nn.Module, cfg: LoopConfig) -> tuple[torch.optim.Optimizer, Any]:
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    name = {"constant": "constant_with_warmup"}.get(cfg.lr_scheduler, cfg.lr_scheduler)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * cfg.steps),
                              num_training_steps=cfg.steps)
    return optimizer, scheduler


def train_loop(model: torch.nn.Module, samples: Sequence[TokenizedSample], cfg: LoopConfig, *,
               pad_token_id: int, callback: TrainingCallback | None = None, log: Any = None) -> LoopResult:
    """Run ``cfg.steps`` optimizer steps over ``samples`` and return the per-step losses."""
    callback = callback or TrainingCallback()
    torch.manual_seed(cfg.seed)
    stream = DataStream(samples, cfg.max_seq_length, packing=cfg.packing, seed=cfg.seed)
    optimizer, scheduler = build_optimizer(model, cfg)
    result = LoopResult(truncated=stream.truncated)
    if stream.truncated and log is not None:
        log.warning("samples_truncated", count=stream.truncated, max_seq_length=cfg.max_seq_length)
    model.train()
    started = time.perf_counter()
    tokens_seen = 0
    for step in range(1, cfg.steps + 1):
        micro_batches = []
        for _ in range(cfg.gradient_accumulation):
            rows, wrapped = stream.take(cfg.batch_size)
            if wrapped:
                callback.fire("on_epoch", stream.epoch)
            micro_batches.append(rows)
        n_targets = sum(t != IGNORE_INDEX for rows in micro_batches for r in rows for t in r.targets)
        loss_total = 0.0
        for rows in micro_batches:
            batch = collate(rows, pad_token_id)
            loss_sum, _ = forward_packed(model, batch)
            if n_targets:
                (loss_sum / n_targets).backward()
            loss_total += float(loss_sum.detach())
            result.samples_seen += sum(len(r.sample_ids) for r in rows)
            tokens_seen += sum(len(r) for r in rows)
        loss = loss_total / max(n_targets, 1)
        if not math.isfinite(loss):
            raise BackpropagateError("RUNTIME_LOSS_NOT_FINITE", f"loss is {loss} at step {step}.")
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        result.loss_history.append(loss)
        result.label_tokens += n_targets
        elapsed = time.perf_counter() - started
        callback.fire("on_step", step, loss)
        callback.fire("on_log", {
            "step": step, "steps_total": cfg.steps, "loss": loss,
            "learning_rate": scheduler.get_last_lr()[0], "tokens": tokens_seen,
            "tokens_per_second": tokens_seen / elapsed if elapsed > 0 else 0.0, "elapsed_seconds": elapsed})
        if log is not None:
            log.debug("step", step=step, loss=round(loss, 5))
    model.eval()
    return result
