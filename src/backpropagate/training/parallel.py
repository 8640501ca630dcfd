"""Several processes, one run: who this process is, and the plumbing the loop needs (through accelerate).

A run under ``torchrun``, ``accelerate launch`` or SLURM ``srun`` is detected from the environment. The
process group and the DistributedDataParallel wrapper come from accelerate; nothing here speaks to the
network itself. Every rank builds the same model, reads the same packed stream and takes its own slice of
each micro-batch (so N processes at batch b train on the rows one process at batch N*b would); the loss is
normalized by the token count of the whole step across ranks, so the update is the single-process one.
Only the main process writes history, checkpoints, trackers and the final adapter.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import BackpropagateError


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


@dataclass
class Parallel:
    """This process's place in a multi-process run."""

    _accelerator: Any
    rank: int
    world_size: int
    local_rank: int

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

    @classmethod
    def from_env(cls) -> Parallel | None:
        """The running multi-process context, or None for an ordinary single-process run."""
        rank, world, local_rank = world_from_env()
        if world <= 1:
            return None
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        return cls(_accelerator=_new_accelerator(), rank=rank, world_size=world, local_rank=local_rank)

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
        """The model as the loop should call it: DistributedDataParallel around the same parameters."""
        return self.accelerator.prepare_model(model)

    def my_rows(self, rows: list[Any]) -> list[Any]:
        """This rank's contiguous share of a global micro-batch of ``world_size * b`` rows."""
        per_rank = len(rows) // self.world_size
        return rows[self.rank * per_rank:(self.rank + 1) * per_rank]

    @contextlib.contextmanager
    def no_sync(self, model: Any, sync: bool) -> Iterator[None]:
        """Skip the gradient all-reduce on every micro-batch of a step but the last."""
        if sync:
            yield
            return
        with self.accelerator.no_sync(model):
            yield


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
