"""Several processes, one run: who this process is, and the plumbing the loop needs (through accelerate).

A run under ``torchrun``, ``accelerate launch`` or SLURM ``srun`` is detected from the environment. The
process group and the DistributedDataParallel wrapper come from accelerate, FSDP from PyTorch
(``training.sharding``), ZeRO from DeepSpeed (``training.zero``); nothing here speaks to the network
itself. Every rank builds the same model, reads the same packed stream and takes its own slice of each
micro-batch (so N processes at batch b train on the rows one process at batch N*b would); the loss is
normalized by the token count of the whole step across ranks, so the update is the single-process one.
Only the main process writes history, checkpoints, trackers and the final adapter.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import declared_default
from ..errors import BackpropagateError
from .sharding import check_fsdp, gather_full_state, shard_fsdp
from .zero import (
    backward,
    check_zero,
    engine_config,
    full_weights,
    initialize,
    load_config,
    partition_name,
    restore_partition,
    save_partition,
)


def world_from_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) set by torchrun / accelerate, or by SLURM's srun; (0, 1, 0) alone."""
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) > 1:
        return int(env.get("RANK", "0")), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and env.get("MASTER_ADDR"):
        rank, world = int(env.get("SLURM_PROCID", "0")), int(env["SLURM_NTASKS"])
        env.setdefault("RANK", str(rank))
        env.setdefault("WORLD_SIZE", str(world))
        env.setdefault("LOCAL_RANK", env.get("SLURM_LOCALID", "0"))
        env.setdefault("MASTER_PORT", "29500")
        return rank, world, int(env["LOCAL_RANK"])
    return 0, 1, 0


class SingleProcess:
    """The strategy of a run in one process: it owns the whole model, writes everything, and every
    collective is the identity. The loop calls it exactly as it calls :class:`Parallel`."""

    rank, world_size, local_rank = 0, 1, 0
    strategy: str | None = None  # what checkpoints record for one process
    distributed = False
    is_main = True
    sharded = False
    steps_inside = False
    zero_stage: int | None = None

    def broadcast(self, value: Any) -> Any:
        return value

    def all_sum(self, value: float) -> float:
        return value

    def barrier(self) -> None:
        """Nothing to wait for."""

    def wrap(self, model: Any) -> Any:
        return model

    def my_rows(self, rows: list[Any]) -> list[Any]:
        return rows

    @contextlib.contextmanager
    def no_sync(self, model: Any, sync: bool) -> Iterator[None]:
        yield

    def stage_partitions(self, engine: Any, staging: Path) -> dict[str, Path]:
        return {}


@dataclass
class Parallel:
    """This process's place in a multi-process run."""
    _accelerator: Any
    rank: int
    world_size: int
    local_rank: int
    strategy: str = declared_default("strategy")  # "ddp" (every rank holds the whole model), "fsdp" or "deepspeed" (partitioned)
    deepspeed: dict[str, Any] | None = None  # the DeepSpeed config (without the batch shape) of "deepspeed"
    distributed = True

    @property
    def accelerator(self) -> Any:
        """accelerate's Accelerator; made again if ``transformers.TrainingArguments`` (which the optimizer
        mapping builds) reset accelerate's shared state. The process group itself is untouched."""
        try:
            self._accelerator.distributed_type  # noqa: B018 - raises once the shared state was reset
        except AttributeError:
            self._accelerator = _new_accelerator()
        return self._accelerator

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """Weights are split across ranks: saving them is a collective every rank takes part in."""
        return self.strategy != "ddp"

    @property
    def steps_inside(self) -> bool:
        """The engine (DeepSpeed) clips and steps the optimizer itself at the end of each accumulation."""
        return self.strategy == "deepspeed"

    @property
    def zero_stage(self) -> int | None:
        return int(self.deepspeed["zero_optimization"]["stage"]) if self.deepspeed is not None else None

    @classmethod
    def from_env(cls, training: Any = None) -> Parallel | SingleProcess:
        """The running multi-process context (strategy from ``TrainingSettings``), or one process's."""
        rank, world, local_rank = world_from_env()
        if world <= 1:
            return SingleProcess()
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        strategy = training.strategy if training is not None else "ddp"
        deepspeed = None
        if strategy == "deepspeed":

            deepspeed = load_config(training.deepspeed_config, training.zero_stage)
        return cls(_accelerator=_new_accelerator(), rank=rank, world_size=world, local_rank=local_rank,
                   strategy=strategy, deepspeed=deepspeed)

    # ---- collective helpers --------------------------------------------------------------------
    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a picklable object)."""
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, value: float) -> float:
        import torch

        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.accelerator.device)
        return float(self.accelerator.reduce(tensor, reduction="sum")[0])

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    # ---- the model ----------------------------------------------------------------------------
    def wrap(self, model: Any) -> Any:
        """The model as the loop should call it: DistributedDataParallel around the same parameters, or
        the model itself sharded in place (FSDP). The optimizer is built after this."""
        if self.strategy == "fsdp":

            return shard_fsdp(model, self.world_size)
        return self.accelerator.prepare_model(model)

    def wrap_engine(self, model: Any, optimizer: Any, scheduler: Any, *, micro_batch: int, accumulation: int,
                    max_grad_norm: float) -> Any:
        """DeepSpeed's engine around ``model``, its optimizer and schedule (after any restore: ZeRO copies
        the weights it partitions)."""
        import torch

        bf16 = any(p.dtype == torch.bfloat16 for p in model.parameters())
        config = engine_config(self.deepspeed or {}, micro_batch=micro_batch, accumulation=accumulation,
                               max_grad_norm=max_grad_norm, world_size=self.world_size, bf16=bf16)
        return initialize(model, optimizer, scheduler, config)

    def restore_engine(self, engine: Any, partition: dict[str, Any]) -> None:
        restore_partition(engine, partition, rank=self.rank, world_size=self.world_size)

    def backward(self, engine: Any, loss: Any) -> None:
        """One micro-batch's backward through DeepSpeed's engine (which also steps when the window ends)."""
        backward(engine, loss)

    def stage_partitions(self, engine: Any, staging: Path) -> dict[str, Path]:
        """DeepSpeed: every rank writes its optimizer partition under ``staging``; returns every rank's file
        by its name in the checkpoint (for rank 0 to move in). Nothing to stage for DDP and FSDP."""
        if self.strategy != "deepspeed":
            return {}

        save_partition(engine, staging / partition_name(self.rank))
        self.barrier()
        return {partition_name(rank): staging / partition_name(rank) for rank in range(self.world_size)}

    def gather(self, model: Any, optimizer: Any = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Full trainable weights (and optimizer state, except DeepSpeed's) of a sharded model, on rank 0;
        every rank calls it."""
        if self.strategy == "deepspeed":

            return full_weights(model, main=self.is_main), None

        return gather_full_state(model, optimizer)

    def my_rows(self, rows: list[Any]) -> list[Any]:
        """This rank's contiguous share of a global micro-batch of ``world_size * b`` rows."""
        per_rank = len(rows) // self.world_size
        return rows[self.rank * per_rank:(self.rank + 1) * per_rank]

    @contextlib.contextmanager
    def no_sync(self, model: Any, sync: bool) -> Iterator[None]:
        """Skip the gradient all-reduce on every micro-batch of a step but the last (DDP). FSDP reduces
        every micro-batch: keeping whole unsharded gradients would undo what sharding saves."""
        if sync or self.strategy != "ddp":  # DeepSpeed reduces at the end of its accumulation window itself
            yield
            return
        with self.accelerator.no_sync(model):
            yield


def check_strategy(settings: Any) -> None:
    """Refuse, before any weight loads, what the chosen multi-process strategy cannot train."""
    if settings.training.strategy == "fsdp":

        check_fsdp(settings)
    elif settings.training.strategy == "deepspeed":

        check_zero(settings)


def _new_accelerator() -> Any:
    import torch
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def check_nproc(nproc: int) -> None:
    """``--nproc`` must fit the GPUs when there are GPUs; CPU processes (gloo) are not limited."""
    import torch

    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise BackpropagateError("INPUT_INVALID_VALUE", f"--nproc {nproc!r} is invalid: expected an integer >= 1.")
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise BackpropagateError("INPUT_INVALID_VALUE", f"--nproc {nproc} asks for more processes than the "
                                 f"{torch.cuda.device_count()} GPU(s) of this machine.",
                                 hint="Use one process per GPU, or --nnodes for more machines.")


ProcessStrategy = Parallel | SingleProcess  # what the loop, the session and the checkpoints are given
