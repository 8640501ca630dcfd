"""Smart defaults: every machine-dependent value the user left unset is decided here, in one place.

``decide_defaults`` turns the resolved settings plus the hardware facts into the values a run uses
(batch size, accumulation, precision, optimizer, learning rate, gradient checkpointing,
train_on_responses, and on a GPU the 4-bit base and LoRA shape that make the memory plan fit the card)
and records *why* each was chosen, so the start-up log can print a small table. Tests and the plan call
it for a hypothetical card.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..config import TRAINER_ARGS, Settings, declared_default
from ..errors import BackpropagateError
from ..hardware import HardwareFacts, auto_batch_size
from ..plan import GB, model_shape, useful_rank
from ..presets import LORA_PRESETS
from .fit import SAFETY_MARGIN, Fit, Knobs, fit_to_card

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
    load_in_4bit: bool = False
    lora_r: int = 0
    lora_alpha: float = 0.0
    target_modules: str | tuple[str, ...] = declared_default("target_modules")
    hardware: HardwareFacts | None = None
    changes: tuple[str, ...] = ()  # "setting=value: why", each change the memory fitting made
    warnings: tuple[str, ...] = ()  # said loudly at start-up (the LoRA rank was lowered)

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

    def apply(self, settings: Settings) -> Settings:
        """A copy of ``settings`` with what these defaults decided for the load (4-bit base, LoRA shape)."""
        out = settings.model_copy(deep=True)
        out.model.load_in_4bit = self.load_in_4bit
        if self.lora_r:
            out.lora.r, out.lora.alpha = self.lora_r, self.lora_alpha
            out.lora.target_modules = (self.target_modules if isinstance(self.target_modules, str)
                                       else list(self.target_modules))
        return out


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


def decide_defaults(settings: Settings, facts: HardwareFacts, *, seq_len: int | None = None,
                    batch_size: int | None = None) -> RunDefaults:
    """Resolve every "auto"/unset value for ``facts`` (this machine, or a card given to the plan).

    On a GPU the memory-relevant values the user left unset are then fitted to the card
    (``training.fit``); ``seq_len`` and ``batch_size`` plan for other values than the settings'.
    """
    cfg = settings.training
    gpu = facts.device == "cuda"
    precision, precision_why = _decide_precision(settings, facts)
    batch, batch_why = _decide_batch(settings, facts, batch_size)
    optim, optim_why = _decide_optim(settings, facts)
    checkpointing, checkpointing_why = _decide_checkpointing(settings, gpu)
    lora = settings.lora
    targets = lora.target_modules if isinstance(lora.target_modules, str) else tuple(lora.target_modules)
    knobs, capped = _cap_rank(settings, Knobs(settings.model.load_in_4bit, batch, optim, lora.r, lora.alpha, targets))
    fit, memory = (None, Choice("memory", "not fitted", "CPU: RAM is the limit and the OS swaps rather than "
                                "failing; trainer.plan() compares the plan with the RAM"))
    if gpu:
        fit, memory = _fit(settings, facts, knobs, precision, checkpointing, batch_free=cfg.batch_size == "auto"
                           and batch_size is None, seq_len=seq_len)
    knobs = fit.knobs if fit is not None else knobs
    why = fit.changes if fit is not None else {}
    accumulation, accumulation_why = _decide_accumulation(settings, gpu, knobs.batch_size)
    responses, responses_why = _decide_responses(settings, facts)
    device = (f"cuda ({facts.gpu_name}, {facts.vram_gb:.1f} GB)", "CUDA is available") if gpu else (
        "cpu", "no CUDA GPU found")
    if knobs.load_in_4bit:
        precision_why += "; base weights in 4-bit NF4 (load_in_4bit)"
    choices = [
        Choice("device", *device), Choice("precision", precision, precision_why),
        Choice("load_in_4bit", str(knobs.load_in_4bit), _four_bit_why(settings, why, fit)),
        Choice("batch_size", str(knobs.batch_size), batch_why + (f"; {why['batch_size']}" if "batch_size" in why
                                                                  else "")),
        Choice("gradient_accumulation", str(accumulation), accumulation_why),
        Choice("method", _method_line(settings, knobs), why.get("lora") or _method_why(settings) + capped),
        Choice("learning_rate", f"{cfg.learning_rate:g}", _lr_why(settings)),
        Choice("optim", knobs.optim, why.get("optim", optim_why)),
        Choice("gradient_checkpointing", "on" if checkpointing else "off", checkpointing_why),
        Choice("train_on_responses", str(responses), responses_why), memory]
    changes = tuple(f"{k}={_changed_value(k, knobs)}: {v}" for k, v in why.items())
    return RunDefaults(device=facts.device, precision=precision, batch_size=knobs.batch_size,
                       gradient_accumulation=accumulation, learning_rate=cfg.learning_rate, optim=knobs.optim,
                       train_on_responses=responses, gradient_checkpointing=checkpointing, choices=tuple(choices),
                       load_in_4bit=knobs.load_in_4bit, lora_r=knobs.lora_r, lora_alpha=knobs.lora_alpha,
                       target_modules=knobs.target_modules, hardware=facts, changes=changes,
                       warnings=tuple(c for c in changes if c.startswith("lora=")))


def _fit(settings: Settings, facts: HardwareFacts, knobs: Knobs, precision: str, checkpointing: bool, *,
         batch_free: bool, seq_len: int | None) -> tuple[Fit | None, Choice]:
    """Fit ``knobs`` to the card by the memory plan; without a readable model config, leave them."""

    try:
        shape = model_shape(settings.model.name, trust_remote_code=settings.model.trust_remote_code)
    except BackpropagateError as exc:
        return None, Choice("memory", "not planned", f"the model's config is not readable ({exc.code}); "
                                                     "the values are not fitted to the card")
    assert facts.vram_gb is not None  # a CUDA HardwareFacts carries its card's memory
    bnb = facts.bitsandbytes if facts.bitsandbytes is not None else _bnb_installed()
    fit = fit_to_card(settings, shape, knobs, int(facts.vram_gb * GB), precision=precision,
                      checkpointing=checkpointing, batch_free=batch_free, bitsandbytes=bnb, seq_len=seq_len)
    value = f"{fit.peak_bytes / GB:.1f} GB of {facts.vram_gb:g} GB"
    why = {"fits": f"memory plan of these values; leaves the {SAFETY_MARGIN:.0%} safety margin free",
           "tight": f"fits the card but not its {SAFETY_MARGIN:.0%} safety margin",
           "does not fit": "does NOT fit even so: the run refuses (RUNTIME_WILL_NOT_FIT) unless "
                           "memory_check='warn'; see trainer.plan() for what would fit"}[fit.verdict]
    return fit, Choice("memory", value, why)


def _cap_rank(settings: Settings, knobs: Knobs) -> tuple[Knobs, str]:
    """The preset's rank lowered to the widest targeted layer of the model (alpha with it, so alpha / r stays):
    on a narrow model a higher rank only costs time. A rank the user set is kept. Returns the why-note."""
    if settings.training.mode == "full" or _given(settings, "lora_r"):
        return knobs, ""
    try:
        widest = useful_rank(model_shape(settings.model.name, trust_remote_code=settings.model.trust_remote_code),
                             knobs.target_modules)
    except BackpropagateError:  # no readable config: the memory row says so
        return knobs, ""
    if not 0 < widest < knobs.lora_r:
        return knobs, ""
    alpha = knobs.lora_alpha * widest / knobs.lora_r
    note = (f"; r capped at {widest} (from {knobs.lora_r}): the model's targeted layers are at most {widest} wide, "
            "a higher rank only costs time")
    return replace(knobs, lora_r=widest, lora_alpha=alpha), note


def _changed_value(key: str, knobs: Knobs) -> str:
    if key == "lora":
        targets = knobs.target_modules if isinstance(knobs.target_modules, str) else ",".join(knobs.target_modules)
        return f"r{knobs.lora_r}/{targets}"
    return str(getattr(knobs, key))


def _four_bit_why(settings: Settings, why: dict[str, str], fit: Fit | None) -> str:
    if "load_in_4bit" in why:
        return "auto: " + why["load_in_4bit"]
    if given_why := _given(settings, "load_in_4bit"):
        return given_why
    return "default: the 16-bit base fits the card" if fit is not None else "default"


def _decide_precision(settings: Settings, facts: HardwareFacts) -> tuple[str, str]:
    if facts.device != "cuda":
        return "fp32", "CPU: half precision is slow and inexact there"
    return ("bf16", "the GPU supports bfloat16") if facts.bf16 else ("fp16", "the GPU has no bfloat16 support")


def _decide_batch(settings: Settings, facts: HardwareFacts, override: int | None) -> tuple[int, str]:
    if override is not None:
        return override, "set for this plan"
    if settings.training.batch_size != "auto":
        return settings.training.batch_size, _given(settings, "batch_size") or "set"
    if facts.device != "cuda":
        return auto_batch_size(None), "auto: the CPU value"
    return (auto_batch_size(facts.vram_gb),
            f"auto: {facts.vram_gb:.0f} GB card (4 for >= 24 GB, 2 for >= 16 GB, 1 below)")


def _decide_accumulation(settings: Settings, gpu: bool, batch_size: int) -> tuple[int, str]:
    why = _given(settings, "gradient_accumulation")
    if why:
        return settings.training.gradient_accumulation, why
    if settings.training.batch_size == "auto" and gpu:
        return (max(1, ROWS_PER_STEP_GPU // batch_size),
                f"auto: keeps {ROWS_PER_STEP_GPU} rows per optimizer step at batch {batch_size}")
    return settings.training.gradient_accumulation, "default"


def _method_line(settings: Settings, knobs: Knobs) -> str:
    if settings.training.mode == "full":
        return "full fine-tuning (every weight trains)"
    kind = "QLoRA" if knobs.load_in_4bit else "LoRA"
    if settings.lora.use_dora:
        kind = "QDoRA" if knobs.load_in_4bit else "DoRA"
    targets = knobs.target_modules if isinstance(knobs.target_modules, str) else ",".join(knobs.target_modules)
    return f"{kind} r={knobs.lora_r} alpha={knobs.lora_alpha:g} targets={targets} init={settings.lora.init_weights}"


def _method_why(settings: Settings) -> str:
    if settings.training.mode == "full":
        return _given(settings, "mode") or "mode"
    return f"lora_preset={settings.lora.preset}" + "".join(
        f"; {arg} {_given(settings, arg)}" for arg in ("lora_r", "lora_alpha", "target_modules")
        if _given(settings, arg))


def _lr_why(settings: Settings) -> str:
    if settings.source("learning_rate").startswith("preset"):
        preset = LORA_PRESETS[settings.lora.preset]
        return f"lora_preset={preset.name}: 2e-4 x {preset.lr_multiplier:g}"
    return _given(settings, "learning_rate") or "default (mode=full: no LoRA factor)"


def _decide_checkpointing(settings: Settings, gpu: bool) -> tuple[bool, str]:
    if settings.training.gradient_checkpointing != "auto":
        return bool(settings.training.gradient_checkpointing), _given(settings, "gradient_checkpointing") or "set"
    if gpu:
        return True, "auto: on for GPUs (memory bound)"
    return False, "auto: off on the CPU (RAM is ample, recompute is slow)"


def _decide_responses(settings: Settings, facts: HardwareFacts) -> tuple[bool, str]:
    why = _given(settings, "train_on_responses")
    if why:
        return settings.training.train_on_responses, why
    if facts.os_name == "nt":
        return False, "auto-off on Windows (os.name == 'nt'); pass train_on_responses=True to keep it"
    return settings.training.train_on_responses, "default"


def _decide_optim(settings: Settings, facts: HardwareFacts) -> tuple[str, str]:
    if settings.training.optim is not None:
        return settings.training.optim, _given(settings, "optim") or "set"
    if facts.device != "cuda":
        return "adamw_torch", "auto: CPU"
    if facts.vram_gb is not None and facts.vram_gb >= LARGE_GPU_GB:
        return "adamw_torch_fused", f"auto: >= {LARGE_GPU_GB} GB card"
    if not (facts.bitsandbytes if facts.bitsandbytes is not None else _bnb_installed()):
        return "adamw_torch_fused", f"auto: < {LARGE_GPU_GB} GB card, but bitsandbytes (qlora extra) is missing"
    return "paged_adamw_8bit", f"auto: < {LARGE_GPU_GB} GB card (8-bit states, paged to CPU RAM under pressure)"


def needs_bitsandbytes(optim: str) -> bool:
    """Whether transformers maps ``optim`` to a bitsandbytes optimizer."""
    return any(key in optim for key in _OPTIMIZER_BITSANDBYTES)


def degradation_knobs(settings: Settings) -> dict[str, Any]:
    """The graceful-degradation switches of this run; guards may add their own."""
    knobs: dict[str, Any] = {}
    knobs["oom_recovery"] = settings.training.oom_recovery
    knobs["unsloth_fallback"] = settings.model.unsloth_fallback
    return knobs


def degradation_line(knobs: Mapping[str, Any], notes: Sequence[str] = ()) -> str:
    """``Degradation knobs: oom_recovery=... unsloth_fallback=...`` plus what actually degraded, once."""
    line = "Degradation knobs: " + " ".join(f"{k}={v}" for k, v in knobs.items())
    return line + ("" if not notes else " | " + "; ".join(notes))
