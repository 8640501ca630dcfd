"""FSDP: the model's weights split across the processes of a run, through PyTorch's own ``fully_shard``.

Every decoder layer (the classes transformers lists in ``_no_split_modules``) becomes one FSDP unit and
the whole model the root unit, so a step gathers one layer at a time: PyTorch's full-shard with
auto-wrap of decoder layers. It is PyTorch's FSDP2 used directly because accelerate only turns its
FSDP plugin on for accelerators (on CPU processes it quietly runs DDP); the same code therefore runs,
and is tested, on CPU processes (gloo) and GPUs (NCCL).

Checkpoints stay in the single-process format (full trainable weights, ``torch.optim`` state keyed by
position): ``gather_full_state`` is a collective every rank calls and rank 0 receives the full tensors,
and ``load_full_state`` shards them again, so a run checkpointed under FSDP resumes under DDP or on
one process, and the other way round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch

from ..errors import BackpropagateError

if TYPE_CHECKING:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, ValueType


def check_fsdp(settings: Any) -> None:
    """Refuse what FSDP cannot shard here (before any weight loads)."""
    hint = "Use DDP (the default) or DeepSpeed ZeRO (--zero 2), or train without it on several processes."
    if settings.model.load_in_4bit:
        raise BackpropagateError(
            "INPUT_STRATEGY_UNSUPPORTED", "FSDP cannot shard 4-bit (QLoRA) weights with the installed torch "
            "and bitsandbytes: fully_shard splits plain tensors, not bitsandbytes' packed Params4bit.",
            hint=hint.replace("train without it", "drop load_in_4bit"))
    if settings.lora.init_weights == "pissa" and settings.training.mode == "lora":
        raise BackpropagateError(
            "INPUT_STRATEGY_UNSUPPORTED", "PiSSA cannot be saved from an FSDP run: its conversion to a plain "
            "LoRA adapter needs the whole model in one process.", hint=hint.replace("it", "PiSSA"))


def decoder_layer_classes(model: torch.nn.Module) -> set[str]:
    """Class names of the decoder layers (transformers' ``_no_split_modules``) of a (PEFT-wrapped) model."""
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if get_base is not None else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    if not names:
        raise BackpropagateError("INPUT_STRATEGY_UNSUPPORTED", f"{type(base).__name__} does not name its decoder "
                                 "layers (_no_split_modules), so FSDP cannot split it layer by layer.",
                                 hint="Use DDP (the default) for this model.")
    return names


def shard_fsdp(model: torch.nn.Module, world_size: int) -> torch.nn.Module:
    """Shard ``model`` in place across the ``world_size`` ranks; build the optimizer after this."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (world_size,))
    dtypes = {p.dtype for p in model.parameters()}
    # One all-gather per unit needs one dtype: bf16 base weights with fp32 adapters gather in the compute dtype.
    policy = MixedPrecisionPolicy(param_dtype=min(dtypes, key=lambda d: torch.finfo(d).bits),
                                  reduce_dtype=torch.float32) if len(dtypes) > 1 else MixedPrecisionPolicy()
    layers = decoder_layer_classes(model)
    for module in list(model.modules()):
        if type(module).__name__ in layers:
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def _options(*, cpu_offload: bool = False, ignore_frozen_params: bool = False,
             strict: bool = True) -> StateDictOptions:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload,
                            ignore_frozen_params=ignore_frozen_params, strict=strict)


def gather_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
                      ) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The full trainable weights and (with ``optimizer``) optimizer state, on rank 0 (empty elsewhere).

    A collective: every rank must call it at the same point. The optimizer state comes back in
    ``optimizer.state_dict()`` layout, so checkpoints do not depend on the strategy.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    names = {id(p): name for name, p in model.named_parameters()}
    # A full model state dict holds tensors; torch annotates every state-dict value type (ValueType).
    full_weights = cast("dict[str, torch.Tensor]",
                        get_model_state_dict(model, options=_options(cpu_offload=True, ignore_frozen_params=True)))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    weights = {name: tensor.contiguous() for name, tensor in full_weights.items() if name in trainable}
    if optimizer is None:
        return weights, None
    full = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    if not full:
        return weights, None
    return weights, _by_position(full, optimizer, names)


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, torch.Tensor],
                    optimizer_state: dict[str, Any] | None) -> None:
    """Put full weights and a ``state_dict()``-layout optimizer state back into the sharded model (every rank)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    # Tensors are state-dict values (ValueType); dict is invariant, and the caller's dict itself is passed.
    set_model_state_dict(model, cast("dict[str, ValueType]", weights), options=_options(strict=False))
    if optimizer_state is None:
        return
    names = {id(p): name for name, p in model.named_parameters()}
    set_optimizer_state_dict(model, optimizer, _by_name(optimizer_state, optimizer, names), options=_options())


def _positions(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> list[str]:
    """Parameter names in the order ``optimizer.state_dict()`` numbers them (group after group)."""
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _by_position(full: dict[str, Any], optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, Any]:
    order = {name: i for i, name in enumerate(_positions(optimizer, names))}
    groups = [{**group, "params": [order[name] for name in group["params"]]} for group in full["param_groups"]]
    return {"state": {order[name]: value for name, value in full["state"].items()}, "param_groups": groups}


def _by_name(state: dict[str, Any], optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, Any]:
    order = _positions(optimizer, names)
    groups = [{**group, "params": [order[i] for i in group["params"]]} for group in state["param_groups"]]
    return {"state": {order[int(i)]: value for i, value in state["state"].items()}, "param_groups": groups}
