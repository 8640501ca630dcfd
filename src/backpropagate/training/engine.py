"""The training loop, readable top to bottom: data stream -> micro-batches -> optimizer steps.

One optimizer step = ``gradient_accumulation`` micro-batches of ``batch_size`` packed rows. The loss is
the token-weighted mean over every target token of the step, so accumulation and packing never change
what is being minimised.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import declared_default
from ..data.packing import PackedRow, collate, pack
from ..data.templates import IGNORE_INDEX, TokenizedSample
from ..errors import BackpropagateError
from .callbacks import TrainingCallback
from .chunked_loss import forward_packed
from .guards import OomRecovery
from .optimizers import create_optimizer
from .parallel import Parallel, ProcessStrategy, SingleProcess


@dataclass(frozen=True)
class LoopConfig:
    steps: int
    batch_size: int
    gradient_accumulation: int
    learning_rate: float
    max_seq_length: int
    packing: bool = True
    warmup_ratio: float = declared_default("warmup_ratio")
    lr_scheduler: str = declared_default("lr_scheduler")
    weight_decay: float = declared_default("weight_decay")
    max_grad_norm: float = declared_default("max_grad_norm")
    seed: int = declared_default("seed")
    shuffle: bool = True  # False keeps the sample order (curriculum), as far as packing allows
    optim: str = "adamw_torch"  # a transformers optimizer name (training.optimizers)
    chunked_loss: bool = True  # logits a chunk at a time (training.chunked_loss); one-process runs only


def _nothing_to_learn(samples: Sequence[TokenizedSample], max_seq_length: int) -> BackpropagateError:
    """No packed row keeps a trained token: say whether the rows are cut too short or have none at all.

    A label at index i is the target of position i - 1, so it survives truncation to i + 1 tokens.
    """
    firsts = [next(i for i, x in enumerate(s.labels) if i >= 1 and x != IGNORE_INDEX) for s in samples
              if any(x != IGNORE_INDEX for x in s.labels[1:])]
    if not firsts:
        return BackpropagateError("INPUT_DATASET_EMPTY", "no sample has a token to learn (every label is masked).",
                                  hint="With train_on_responses, each sample needs a non-empty assistant turn.")
    need = min(firsts) + 1
    return BackpropagateError(
        "INPUT_SEQUENCE_TOO_SHORT",
        f"max_seq_length={max_seq_length} cuts every sample before its first trained token (the earliest is "
        f"token {need - 1}, after the prompt and template), so nothing would be learned.",
        hint=f"Use max_seq_length of at least {need} (better, the length of a whole sample), or shorter prompts.")


class DataStream:
    """Packed rows in a seeded order, epoch after epoch; each epoch is re-shuffled with ``seed + epoch``.

    ``shuffle=False`` keeps the given sample order every epoch (a curriculum); best-fit packing may still
    place a short sample into an earlier, partly filled row.
    """

    def __init__(self, samples: Sequence[TokenizedSample], max_seq_length: int, *, packing: bool,
                 seed: int, shuffle: bool = True) -> None:
        self.samples = samples
        self.max_seq_length = max_seq_length
        self.packing = packing
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self.truncated = 0
        self._rows = self._plan(0)
        if not self._rows:
            raise BackpropagateError("INPUT_DATASET_EMPTY", "no sample has any tokens to train on.")
        if not any(t != IGNORE_INDEX for row in self._rows for t in row.targets):
            raise _nothing_to_learn(samples, max_seq_length)

    def _plan(self, epoch: int) -> list[PackedRow]:
        plan = pack(self.samples, self.max_seq_length, packing=self.packing,
                    seed=self.seed + epoch if self.shuffle else None)
        if epoch == 0:
            self.truncated = plan.truncated
        return plan.rows

    def take(self, n: int) -> tuple[list[PackedRow], bool]:
        """The next ``n`` rows, and whether an epoch ended while taking them."""
        rows: list[PackedRow] = []
        wrapped = False
        while len(rows) < n:
            if self.position == len(self._rows):
                self.epoch += 1
                self.position = 0
                self._rows = self._plan(self.epoch)
                wrapped = True
            rows.append(self._rows[self.position])
            self.position += 1
        return rows, wrapped

    def state_dict(self) -> dict[str, int]:
        """Where the stream stands; loading it back continues with exactly the same next row."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        rows = self._rows if state["epoch"] == self.epoch else self._plan(state["epoch"])
        if not 0 <= state["position"] <= len(rows):
            raise BackpropagateError("INPUT_RESUME_MISMATCH", f"data position {state['position']} of epoch "
                                     f"{state['epoch']} does not exist: the data has {len(rows)} packed rows.")
        self._rows, self.epoch, self.position = rows, state["epoch"], state["position"]

    def plan_digest(self) -> str:
        """sha256 of this epoch's packing order (the sample ids of every row), to detect a changed plan."""
        return hashlib.sha256(json.dumps([row.sample_ids for row in self._rows]).encode()).hexdigest()


@dataclass
class LoopResult:
    loss_history: list[float] = field(default_factory=list)
    samples_seen: int = 0
    label_tokens: int = 0
    truncated: int = 0


def build_optimizer(model: torch.nn.Module, cfg: LoopConfig) -> tuple[torch.optim.Optimizer, Any]:
    from transformers import get_scheduler

    optimizer = create_optimizer(model, cfg.optim, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay)
    name = {"constant": "constant_with_warmup"}.get(cfg.lr_scheduler, cfg.lr_scheduler)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * cfg.steps),
                              num_training_steps=cfg.steps)
    return optimizer, scheduler


@dataclass
class LoopState:
    """The loop between two optimizer steps: what a checkpoint captures and what the guards adjust."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    stream: DataStream
    result: LoopResult
    batch_size: int  # rows per micro-batch now; OOM recovery may lower it
    gradient_accumulation: int
    steps_total: int
    step: int = 0  # optimizer steps completed
    tokens_seen: int = 0
    epochs_announced: int = 0
    parallel: ProcessStrategy = field(default_factory=SingleProcess)  # one process, or its place among several
    forward_model: Any = None  # what is called: ``model`` (also when FSDP-sharded), DDP or DeepSpeed around it
    engine_state: Any = None  # a restored DeepSpeed optimizer partition, until its engine exists
    chunked_loss: bool = False  # LoopConfig.chunked_loss
    stop_reason: str | None = None  # set by a hook (early stopping): the loop ends after this step, complete
    extra: dict[str, Any] = field(default_factory=dict)  # hooks' own state, saved in checkpoints (evaluation)


@dataclass
class LoopHooks:
    """Optional hooks of the loop; the run session supplies them.

    ``restore(state)`` runs once before the first step (resuming from a checkpoint); ``after_step(state)``
    after every optimizer step (checkpoints, thermal guard); ``oom`` is the recovery policy (a
    ``guards.OomRecovery``).
    """
    restore: Callable[[LoopState], None] | None = None
    after_step: Callable[[LoopState], None] | None = None
    oom: Any = None


def train_loop(model: torch.nn.Module, samples: Sequence[TokenizedSample], cfg: LoopConfig, *,
               pad_token_id: int, callback: TrainingCallback | None = None, log: Any = None,
               hooks: LoopHooks | None = None, parallel: ProcessStrategy | None = None) -> LoopResult:
    """Run optimizer steps up to ``cfg.steps`` over ``samples`` and return the per-step losses.

    ``parallel`` is the process strategy (default: one process); under ``training.parallel.Parallel``
    this process trains its share of every step.
    """
    parallel = parallel if parallel is not None else SingleProcess()
    callback = callback or TrainingCallback()
    hooks = hooks or LoopHooks()
    oom = hooks.oom or OomRecovery(log=log)
    if parallel.distributed and oom.enabled:  # one rank halving its batch alone would stall the others
        oom = OomRecovery(enabled=False, log=log)
        if log is not None:
            log.info("oom_recovery_off", reason="multi-process run: every rank must keep the same micro-batch")
    state = _start(model, samples, cfg, hooks, parallel)
    stream, optimizer, scheduler, engine_later = state.stream, state.optimizer, state.scheduler, parallel.steps_inside
    if stream.truncated and log is not None:
        log.warning("samples_truncated", count=stream.truncated, max_seq_length=cfg.max_seq_length)
    model.train()
    started, tokens_at_start = time.perf_counter(), state.tokens_seen
    trainable = [p for p in model.parameters() if p.requires_grad]
    while state.step < cfg.steps and state.stop_reason is None:
        step = state.step + 1
        micro_batches, loss_total, n_targets = oom.run_step(
            state, step, functools.partial(_accumulate, state, step, pad_token_id, callback))
        loss = loss_total / max(n_targets, 1)
        if not math.isfinite(loss):
            raise BackpropagateError("RUNTIME_LOSS_NOT_FINITE", f"loss is {loss} at step {step}.")
        if not engine_later:  # (DeepSpeed's engine clipped and stepped with the last micro-batch)
            torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        state.step = step
        state.result.loss_history.append(loss)
        state.result.label_tokens += n_targets
        state.result.samples_seen += sum(len(r.sample_ids) for rows in micro_batches for r in rows)
        state.tokens_seen += sum(len(r) for rows in micro_batches for r in rows)
        elapsed = time.perf_counter() - started
        callback.fire("on_step", step, loss)
        callback.fire("on_log", {
            "step": step, "steps_total": cfg.steps, "loss": loss,
            "learning_rate": scheduler.get_last_lr()[0], "tokens": state.tokens_seen,
            "tokens_per_second": (state.tokens_seen - tokens_at_start) / elapsed if elapsed > 0 else 0.0,
            "elapsed_seconds": elapsed, "batch_size": state.batch_size,
            "gradient_accumulation": state.gradient_accumulation})
        if log is not None:
            log.debug("step", step=step, loss=round(loss, 5))
        if hooks.after_step is not None:
            hooks.after_step(state)
    model.eval()
    return state.result


def _start(model: torch.nn.Module, samples: Sequence[TokenizedSample], cfg: LoopConfig, hooks: LoopHooks,
           parallel: ProcessStrategy) -> LoopState:
    """The loop's state before step 1: seeded stream, the model as called, optimizer, any restored checkpoint."""
    torch.manual_seed(cfg.seed)
    stream = DataStream(samples, cfg.max_seq_length, packing=cfg.packing, seed=cfg.seed, shuffle=cfg.shuffle)
    # What the loop calls: FSDP shards the parameters in place, so the optimizer is built after wrapping;
    # DeepSpeed's engine takes the optimizer and the restored weights, so it is built after the restore.
    engine_later = parallel.steps_inside
    forward_model = model if engine_later else parallel.wrap(model)
    optimizer, scheduler = build_optimizer(model, cfg)
    state = LoopState(model=model, optimizer=optimizer, scheduler=scheduler, stream=stream,
                      result=LoopResult(truncated=stream.truncated), batch_size=cfg.batch_size,
                      gradient_accumulation=cfg.gradient_accumulation, steps_total=cfg.steps,
                      parallel=parallel, forward_model=forward_model, chunked_loss=cfg.chunked_loss)
    if hooks.restore is not None:
        hooks.restore(state)  # weights, optimizer, schedule, data position and RNG of a checkpoint
    if isinstance(parallel, Parallel) and engine_later:
        state.forward_model = parallel.wrap_engine(model, optimizer, scheduler, micro_batch=state.batch_size,
                                                   accumulation=state.gradient_accumulation,
                                                   max_grad_norm=cfg.max_grad_norm)
        if state.engine_state is not None:
            parallel.restore_engine(state.forward_model, state.engine_state)
            state.engine_state = None
    return state


def _accumulate(state: LoopState, step: int, pad_token_id: int,
                callback: TrainingCallback) -> tuple[list[list[PackedRow]], float, int]:
    """Forward and backward passes of one optimizer step: its micro-batches, summed loss and target count.

    In a multi-process run the sums are over every rank, and each rank's loss is scaled by the world size
    because DistributedDataParallel averages the gradients.
    """
    parallel = state.parallel
    micro_batches = [_take(state, callback) for _ in range(state.gradient_accumulation)]
    n_targets = int(parallel.all_sum(sum(t != IGNORE_INDEX for rows in micro_batches for r in rows
                                         for t in r.targets)))
    scale = float(parallel.world_size)
    loss_total = 0.0
    # A wrapped model (DDP, FSDP, DeepSpeed) must be called whole, or its hooks miss the forward.
    chunked = state.chunked_loss and not parallel.distributed
    last = len(micro_batches) - 1
    for index, rows in enumerate(micro_batches):
        with parallel.no_sync(state.forward_model, index == last):
            loss_sum, _ = forward_packed(state.forward_model, collate(rows, pad_token_id),
                                         chunked_loss=chunked)
            if isinstance(parallel, Parallel) and parallel.steps_inside:  # the engine counts every micro-batch
                parallel.backward(state.forward_model, loss_sum * (scale / n_targets if n_targets else 0.0))
            elif n_targets:
                (loss_sum * (scale / n_targets)).backward()
        loss_total += float(loss_sum.detach())
    return micro_batches, parallel.all_sum(loss_total), n_targets


def _take(state: LoopState, callback: TrainingCallback) -> list[PackedRow]:
    # every rank reads the whole global micro-batch and keeps its slice, so the order is shared
    rows, _ = state.stream.take(state.batch_size * state.parallel.world_size)
    rows = state.parallel.my_rows(rows)
    while state.epochs_announced < state.stream.epoch:  # announced once, even when a step is redone
        state.epochs_announced += 1
        callback.fire("on_epoch", state.epochs_announced)
    return rows
