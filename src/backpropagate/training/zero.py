"""DeepSpeed ZeRO-2/3: optimizer state and gradients (ZeRO-3: the weights too) partitioned across ranks.

DeepSpeed's own engine (``deepspeed.initialize``) does the partitioning, the gradient reduction at the end
of each accumulation window, the clipping and the optimizer step; the loop hands it each micro-batch's
loss. accelerate's DeepSpeed plugin is not used because it refuses CPU processes, so the same code runs,
and is tested, on gloo and on NCCL. The optimizer and LR schedule stay backpropagate's (``optim``,
``lr_scheduler``), so a ``--deepspeed`` file must not name its own.

Checkpoints hold the full weights (gathered from the partitions), schedule, data position and RNG in the
format every strategy shares, plus each rank's partition of the optimizer state
(``zero/optimizer-rank<r>.pt``, from the ZeRO optimizer's own ``state_dict``). That partition is read back
with ``torch.load(weights_only=True)``, allowing only DeepSpeed's three plain record classes, never
through DeepSpeed's own pickle-based ``load_checkpoint``. It fits only the same world size and stage;
otherwise the resumed run restarts its optimizer moments and says so.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import BackpropagateError

DEFAULT_STAGE = 2
_OURS = "Set it with batch_size, gradient_accumulation or max_grad_norm, or write \"auto\" in the file."


def require_deepspeed() -> Any:
    try:
        import deepspeed
    except ImportError as exc:
        raise BackpropagateError("DEP_EXTRA_MISSING", f"DeepSpeed is not installed ({exc}).",
                                 hint='pip install "backpropagate[deepspeed]"') from exc
    return deepspeed


def check_zero(settings: Any) -> None:
    """DeepSpeed is installed, its config parses, and the stage can train this setup (before any weight loads)."""
    require_deepspeed()
    stage = load_config(settings.training.deepspeed_config, settings.training.zero_stage)["zero_optimization"]["stage"]
    if stage == 3 and settings.model.load_in_4bit:
        raise BackpropagateError("INPUT_STRATEGY_UNSUPPORTED", "ZeRO-3 cannot partition 4-bit (QLoRA) weights.",
                                 hint="Use ZeRO-2 (--zero 2) with QLoRA, or drop load_in_4bit.")
    if stage == 3 and settings.lora.init_weights == "pissa" and settings.training.mode == "lora":
        raise BackpropagateError("INPUT_STRATEGY_UNSUPPORTED", "PiSSA cannot be saved from a ZeRO-3 run: its "
                                 "conversion to a plain LoRA adapter needs the whole model in one process.",
                                 hint="Use ZeRO-2 (--zero 2) or DDP with PiSSA.")


def load_config(path: str | Path | None, zero_stage: int | None) -> dict[str, Any]:
    """The DeepSpeed configuration of a run: the user's JSON file (if any) with ``zero_stage`` on top."""
    config: dict[str, Any] = {}
    if path is not None:
        file = Path(path).expanduser()
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BackpropagateError("INPUT_FILE_NOT_FOUND", f"DeepSpeed config {file} does not exist.") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise BackpropagateError("INPUT_FILE_UNREADABLE", f"DeepSpeed config {file}: {exc}.") from None
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BackpropagateError("INPUT_INVALID_JSON", f"DeepSpeed config {file} does not parse: {exc.msg} "
                                     f"at line {exc.lineno}, column {exc.colno}.",
                                     hint="DeepSpeed configs are plain JSON: no comments or trailing commas.") from None
        if not isinstance(config, dict):
            raise BackpropagateError("INPUT_CONFIG_INVALID", f"DeepSpeed config {file} is a JSON "
                                     f"{type(config).__name__}, not an object.")
        for section in ("optimizer", "scheduler"):
            if section in config:
                raise BackpropagateError(
                    "INPUT_CONFIG_INVALID", f"DeepSpeed config {file} has a {section!r} section.",
                    hint="Remove it: the optim and lr_scheduler settings choose the optimizer and schedule.")
    zero = config.setdefault("zero_optimization", {})
    if not isinstance(zero, dict):
        raise BackpropagateError("INPUT_CONFIG_INVALID", "DeepSpeed config: zero_optimization must be an object.")
    if zero_stage is not None:
        zero["stage"] = zero_stage
    zero.setdefault("stage", DEFAULT_STAGE)
    if zero["stage"] not in (0, 1, 2, 3):
        raise BackpropagateError("INPUT_CONFIG_INVALID", f"DeepSpeed ZeRO stage {zero['stage']!r} does not exist "
                                 "(0, 1, 2 or 3).")
    return config


def engine_config(base: dict[str, Any], *, micro_batch: int, accumulation: int, max_grad_norm: float,
                  world_size: int, bf16: bool) -> dict[str, Any]:
    """``base`` completed with the run's batch shape and clipping; a file value that disagrees is refused."""
    config = copy.deepcopy(base)
    ours = {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": accumulation,
            "train_batch_size": micro_batch * accumulation * world_size, "gradient_clipping": max_grad_norm}
    for key, value in ours.items():
        if config.get(key, "auto") not in ("auto", value):
            raise BackpropagateError("INPUT_CONFIG_INVALID", f"DeepSpeed config sets {key}={config[key]!r}, but "
                                     f"this run uses {value!r}.", hint=_OURS)
        config[key] = value
    if bf16 and "bf16" not in config and "fp16" not in config:
        config["bf16"] = {"enabled": True}
    config.setdefault("steps_per_print", 10**9)  # progress is ours to report
    return config


def initialize(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
               config: dict[str, Any]) -> Any:
    """DeepSpeed's engine around ``model``: called like the model, it owns backward, clipping and stepping."""
    deepspeed = require_deepspeed()
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    return engine


def backward(engine: Any, loss: torch.Tensor) -> None:
    """One micro-batch: the loss is already normalized over the whole step, so no division by accumulation."""
    engine.backward(loss, scale_wrt_gas=False)
    engine.step()  # reduces, clips and steps only at the end of the accumulation window


def full_weights(model: torch.nn.Module, *, main: bool) -> dict[str, torch.Tensor]:
    """The trainable weights, whole, on the main rank; ZeRO-3 partitions are gathered (every rank calls it)."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not any(hasattr(p, "ds_id") for _, p in named):  # ZeRO-0/1/2: every rank holds the weights
        return {name: p.detach().to("cpu").contiguous() for name, p in named} if main else {}
    deepspeed = require_deepspeed()
    with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
        return {name: p.detach().to("cpu").clone() for name, p in named} if main else {}


def stage_of(engine: Any) -> int:
    return int(engine.zero_optimization_stage())


def partition_name(rank: int) -> str:
    return f"zero/optimizer-rank{rank}.pt"


def save_partition(engine: Any, path: Path) -> None:
    """This rank's share of the optimizer state (fp32 master weights, moments), fsynced."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(engine.optimizer.state_dict(), path)
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def load_partition(path: Path) -> dict[str, Any] | None:
    """A saved partition, unpickling nothing but tensors, builtins and DeepSpeed's record classes; None if
    this DeepSpeed's state holds something else (it then restarts the optimizer)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            return None


def restore_partition(engine: Any, partition: dict[str, Any], *, rank: int, world_size: int) -> None:
    """Put this rank's partition back into a freshly built engine (same world size and stage)."""
    states = [partition if i == rank else None for i in range(world_size)]
    engine.optimizer.load_state_dict(states, load_optimizer_states=True, load_from_fp32_weights=True)
    if stage_of(engine) < 3:  # ZeRO-1/2 keep the model's own copy apart from the fp32 masters
        engine.optimizer.update_lp_params()
