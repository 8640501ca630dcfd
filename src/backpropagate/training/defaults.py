"""Smart defaults: every machine-dependent value the user left unset is decided here, in one place.

``decide_defaults`` turns the resolved settings plus the hardware facts into the values a run uses
(batch size, accumulation, precision, optimizer, learning rate, gradient checkpointing,
train_on_responses) and records *why* each was chosen, so the start-up log can print a small table.
It imports nothing heavy, so the memory plan and tests can call it for a hypothetical card.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import TRAINER_ARGS, Settings
from ..hardware import HardwareFacts, auto_batch_size
from ..presets import LORA_PRESETS

ROWS_PER_STEP_GPU = 16  # batch_size x gradient_accumulation kept on GPUs when the batch size is "auto"
LARGE_GPU_GB = 24
_OPTIMIZER_BITSANDBYTES = ("8bit", "paged", "bnb", "lion", "ademamix")


@dataclass(frozen=True)
class Choice:
    """One row of the start-up table."""

    setting: str
    value: str
    why: str


@dataclass(frozen=True)
class RunDefaults:
    """The values a run uses, after the user's settings and the machine have been taken into account."""

    device: str
    precision: str  # "bf16", "fp16" or "fp32"
    batch_size: int
    gradient_accumulation: int
    learning_rate: float
    optim: str
    train_on_responses: bool
    gradient_checkpointing: bool
    choices: tuple[Choice, ...]

    @property
    def torch_dtype(self) -> Any:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.precision]

    def table(self) -> str:
        """The choices as an aligned text table: setting, value, why."""
        rows = [("setting", "value", "why")] + [(c.setting, c.value, c.why) for c in self.choices]
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        return "\n".join(f"  {a.ljust(w0)}  {b.ljust(w1)}  {c}" for a, b, c in rows)


def _given(settings: Settings, arg: str) -> str | None:
    """Why a value the user set is what it is ("set by argument" / "set by BACKPROPAGATE_...")."""
    source = settings.source(arg)
    if source == "argument":
        return "set by argument"
    if source == "env":
        group, field = TRAINER_ARGS[arg]
        return f"set by BACKPROPAGATE_{group.upper()}__{field.upper()}"
    return None


def _bnb_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("bitsandbytes") is not None


def decide_defaults(settings: Settings, facts: HardwareFacts) -> RunDefaults:
    """Resolve every "auto"/unset value for ``facts`` (this machine, or a card given to the plan)."""
    cfg, lora = settings.training, settings.lora
    gpu = facts.device == "cuda"
    choices: list[Choice] = []

    if gpu:
        choices.append(Choice("device", f"cuda ({facts.gpu_name}, {facts.vram_gb:.1f} GB)", "CUDA is available"))
    else:
        choices.append(Choice("device", "cpu", "no CUDA GPU found"))

    if gpu:
        precision, why = ("bf16", "the GPU supports bfloat16") if facts.bf16 else (
            "fp16", "the GPU has no bfloat16 support")
    else:
        precision, why = "fp32", "CPU: half precision is slow and inexact there"
    if settings.model.load_in_4bit:
        why += "; base weights in 4-bit NF4 (load_in_4bit)"
    choices.append(Choice("precision", precision, why))

    if cfg.batch_size == "auto":
        batch_size = auto_batch_size(facts.vram_gb if gpu else None)
        why = (f"auto: {facts.vram_gb:.0f} GB card (4 for >= 24 GB, 2 for >= 16 GB, 1 below)" if gpu
               else "auto: the CPU value")
    else:
        batch_size, why = cfg.batch_size, _given(settings, "batch_size") or "set"
    choices.append(Choice("batch_size", str(batch_size), why))

    accumulation = cfg.gradient_accumulation
    why = _given(settings, "gradient_accumulation") or "default"
    if why == "default" and cfg.batch_size == "auto" and gpu:
        accumulation = max(1, ROWS_PER_STEP_GPU // batch_size)
        why = f"auto: keeps {ROWS_PER_STEP_GPU} rows per optimizer step at batch {batch_size}"
    choices.append(Choice("gradient_accumulation", str(accumulation), why))

    if settings.training.mode == "full":
        method = "full fine-tuning (every weight trains)"
        why = _given(settings, "mode") or "mode"
    else:
        kind = "QLoRA" if settings.model.load_in_4bit else "LoRA"
        if lora.use_dora:
            kind = "QDoRA" if settings.model.load_in_4bit else "DoRA"
        targets = lora.target_modules if isinstance(lora.target_modules, str) else ",".join(lora.target_modules)
        method = f"{kind} r={lora.r} alpha={lora.alpha:g} targets={targets} init={lora.init_weights}"
        why = f"lora_preset={lora.preset}" + "".join(
            f"; {arg} {_given(settings, arg)}" for arg in ("lora_r", "lora_alpha", "target_modules")
            if _given(settings, arg))
    choices.append(Choice("method", method, why))

    source = settings.source("learning_rate")
    if source.startswith("preset"):
        preset = LORA_PRESETS[lora.preset]
        why = f"lora_preset={preset.name}: 2e-4 x {preset.lr_multiplier:g}"
    else:
        why = _given(settings, "learning_rate") or "default (mode=full: no LoRA factor)"
    choices.append(Choice("learning_rate", f"{cfg.learning_rate:g}", why))

    optim, why = _decide_optim(settings, facts)
    choices.append(Choice("optim", optim, why))

    if cfg.gradient_checkpointing == "auto":
        checkpointing = gpu
        why = "auto: on for GPUs (memory bound)" if gpu else "auto: off on the CPU (RAM is ample, recompute is slow)"
    else:
        checkpointing = bool(cfg.gradient_checkpointing)
        why = _given(settings, "gradient_checkpointing") or "set"
    choices.append(Choice("gradient_checkpointing", "on" if checkpointing else "off", why))

    responses = cfg.train_on_responses
    why = _given(settings, "train_on_responses") or "default"
    if why == "default" and facts.os_name == "nt":
        responses = False
        why = "auto-off on Windows (os.name == 'nt'); pass train_on_responses=True to keep it"
    choices.append(Choice("train_on_responses", str(responses), why))

    return RunDefaults(device=facts.device, precision=precision, batch_size=batch_size,
                       gradient_accumulation=accumulation, learning_rate=cfg.learning_rate, optim=optim,
                       train_on_responses=responses, gradient_checkpointing=checkpointing,
                       choices=tuple(choices))


def _decide_optim(settings: Settings, facts: HardwareFacts) -> tuple[str, str]:
    if settings.training.optim is not None:
        return settings.training.optim, _given(settings, "optim") or "set"
    if facts.device != "cuda":
        return "adamw_torch", "auto: CPU"
    if facts.vram_gb is not None and facts.vram_gb >= LARGE_GPU_GB:
        return "adamw_torch_fused", f"auto: >= {LARGE_GPU_GB} GB card"
    if not _bnb_installed():
        return "adamw_torch_fused", f"auto: < {LARGE_GPU_GB} GB card, but bitsandbytes (qlora extra) is missing"
    return "paged_adamw_8bit", f"auto: < {LARGE_GPU_GB} GB card (8-bit states, paged to CPU RAM under pressure)"


def needs_bitsandbytes(optim: str) -> bool:
    """Whether transformers maps ``optim`` to a bitsandbytes optimizer."""
    return any(key in optim for key in _OPTIMIZER_BITSANDBYTES)


def degradation_knobs(settings: Settings) -> dict[str, Any]:
    """The graceful-degradation switches of this run; guards may add their own."""
    knobs: dict[str, Any] = {}
    for group in (settings.training, settings.model):
        if "oom_recovery" in type(group).model_fields:
            knobs["oom_recovery"] = group.oom_recovery
    knobs["unsloth_fallback"] = settings.model.unsloth_fallback
    return knobs


def degradation_line(knobs: Mapping[str, Any], notes: Sequence[str] = ()) -> str:
    """``Degradation knobs: oom_recovery=... unsloth_fallback=...`` plus what actually degraded, once."""
    line = "Degradation knobs: " + " ".join(f"{k}={v}" for k, v in knobs.items())
    return line + ("" if not notes else " | " + "; ".join(notes))
