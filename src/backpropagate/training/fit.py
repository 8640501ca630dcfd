"""Fit the smart defaults to the card: from the memory plan, the least costly changes that make a run fit.

Only values the user left unset move, in this order, each stage trying the largest micro-batch first
(gradient accumulation keeps the rows per step): the micro-batch, the optimizer (8-bit paged states),
4-bit base weights (QLoRA), and, as the last resort, the LoRA rank (halved down to 16) and then the
``fast`` preset's targets. A configuration fits when the plan's peak leaves ``SAFETY_MARGIN`` of the card
free: the plan is an estimate, and the allocator fragments. On the CPU nothing is fitted (RAM is the
limit there and the OS swaps instead of failing); the plan still reports it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..errors import BackpropagateError
from ..plan import GB, PlanSettings, estimate, make_plan, model_shape
from ..presets import LORA_PRESETS

if TYPE_CHECKING:
    from ..hardware import HardwareFacts
    from ..plan import MemoryPlan, ModelShape

SAFETY_MARGIN = 0.10  # share of the card the chosen defaults leave free
LOWEST_AUTO_RANK = 16  # the fitting never lowers the rank below the fast preset's
GIVEN = ("argument", "env")


@dataclass(frozen=True)
class Knobs:
    """The memory-relevant values the fitting may change."""

    load_in_4bit: bool
    batch_size: int
    optim: str
    lora_r: int
    lora_alpha: float
    target_modules: str | tuple[str, ...]


@dataclass(frozen=True)
class Fit:
    """The chosen knobs, their plan's peak, the card, and why each knob moved (``changes``)."""

    knobs: Knobs
    peak_bytes: int
    capacity_bytes: int
    changes: dict[str, str]  # setting -> why it was changed from the preset / the plain default

    @property
    def usable_bytes(self) -> int:
        return int(self.capacity_bytes * (1 - SAFETY_MARGIN))

    @property
    def verdict(self) -> str:
        if self.peak_bytes <= self.usable_bytes:
            return "fits"
        return "tight" if self.peak_bytes <= self.capacity_bytes else "does not fit"


def given(settings: Settings, arg: str) -> bool:
    """Whether the user set ``arg`` (argument or BACKPROPAGATE_* variable): such a value never moves."""
    return settings.source(arg) in GIVEN


def method_for(settings: Settings, load_in_4bit: bool) -> str:
    """The plan's method name with ``load_in_4bit`` as decided."""
    if settings.training.mode == "full":
        return "full"
    if settings.lora.use_dora:
        return "dora"
    return "qlora" if load_in_4bit else "lora"


def plan_settings(settings: Settings, knobs: Knobs, *, precision: str, checkpointing: bool, device: str,
                  seq_len: int | None = None) -> Any:
    """The memory plan's settings for ``knobs`` (plus what the fitting does not move)."""

    return PlanSettings(method=method_for(settings, knobs.load_in_4bit), lora_r=knobs.lora_r,
                        target_modules=knobs.target_modules, lora_dropout=settings.lora.dropout,
                        precision=precision, optim=knobs.optim, gradient_checkpointing=checkpointing,
                        batch_size=knobs.batch_size, seq_len=seq_len or settings.training.max_seq_length,
                        device=device, chunked_loss=settings.training.chunked_loss is not False)


def four_bit_allowed(settings: Settings, bitsandbytes: bool) -> str | None:
    """None when the fitting may choose QLoRA, else why not."""
    if given(settings, "load_in_4bit"):
        return "load_in_4bit is set"
    if settings.training.mode == "full" or settings.lora.use_dora or settings.lora.init_weights != "default":
        return "only plain LoRA is moved to 4-bit automatically"
    if settings.training.strategy != "ddp":
        return f"strategy={settings.training.strategy} cannot shard 4-bit weights"
    if not bitsandbytes:
        return "bitsandbytes (the qlora extra) is not installed: pip install backpropagate[qlora]"
    return None


def _rank_free(settings: Settings) -> bool:
    return (settings.training.mode == "lora" and not given(settings, "lora_r")
            and not given(settings, "lora_preset"))


def _stages(settings: Settings, start: Knobs, *, bitsandbytes: bool) -> list[tuple[Knobs, str]]:
    """Cumulative configurations, least costly first, each with the knob it moved."""
    stages, k = [(start, "")], start
    if settings.training.optim is None and "8bit" not in k.optim and bitsandbytes:
        k = replace(k, optim="paged_adamw_8bit")
        stages.append((k, "optim"))
    if not k.load_in_4bit and four_bit_allowed(settings, bitsandbytes) is None:
        k = replace(k, load_in_4bit=True)
        stages.append((k, "load_in_4bit"))
    if _rank_free(settings):
        preset = LORA_PRESETS[settings.lora.preset]
        while k.lora_r > LOWEST_AUTO_RANK:
            r = max(LOWEST_AUTO_RANK, k.lora_r // 2)
            alpha = k.lora_alpha if given(settings, "lora_alpha") else r * preset.alpha / preset.r
            k = replace(k, lora_r=r, lora_alpha=float(alpha))
            stages.append((k, "lora_r"))
        if k.target_modules == "all-linear" and not given(settings, "target_modules"):
            fast = LORA_PRESETS["fast"].target_modules
            k = replace(k, target_modules=fast if isinstance(fast, str) else tuple(fast))
            stages.append((k, "target_modules"))
    return stages


def _batches(start: int, free: bool) -> list[int]:
    sizes = [start]
    while free and sizes[-1] > 1:
        sizes.append(sizes[-1] // 2)
    return sizes


def fit_to_card(settings: Settings, shape: ModelShape, start: Knobs, capacity_bytes: int, *,
                precision: str, checkpointing: bool, batch_free: bool, bitsandbytes: bool,
                seq_len: int | None = None) -> Fit:
    """The first configuration (least costly change first) whose plan leaves the safety margin free.

    None does: the first that fits the card at all ("tight"), else the leanest ("does not fit").
    """

    tried: list[tuple[Knobs, int, str]] = []
    for stage, moved in _stages(settings, start, bitsandbytes=bitsandbytes):
        for batch in _batches(start.batch_size, batch_free):
            knobs = replace(stage, batch_size=batch)
            ps = plan_settings(settings, knobs, precision=precision, checkpointing=checkpointing, device="cuda",
                               seq_len=seq_len)
            peak = sum(estimate(shape, ps)[1].values())
            tried.append((knobs, peak, moved))
            if peak <= capacity_bytes * (1 - SAFETY_MARGIN):
                return _explain(settings, shape, start, knobs, peak, capacity_bytes, tried, precision)
    fitting = [t for t in tried if t[1] <= capacity_bytes]
    knobs, peak, _ = fitting[0] if fitting else tried[-1]
    return _explain(settings, shape, start, knobs, peak, capacity_bytes, tried, precision)


def _explain(settings: Settings, shape: ModelShape, start: Knobs, chosen: Knobs, peak: int, capacity: int,
             tried: list[tuple[Knobs, int, str]], precision: str) -> Fit:
    """Why each knob moved, in the numbers of the plan."""
    gb, card = 1024**3, capacity / 1024**3
    usable = capacity * (1 - SAFETY_MARGIN) / gb
    prior: dict[str, int] = {}  # the leanest peak before each stage began
    for (_, p, moved), (_, _, nxt) in zip(tried, tried[1:], strict=False):
        if nxt and nxt != moved:
            prior.setdefault(nxt, p)
    changes: dict[str, str] = {}
    if chosen.batch_size != start.batch_size:
        changes["batch_size"] = (f"lowered from {start.batch_size} (the {card:g} GB card's auto value) so the plan "
                                 f"fits")
    if chosen.optim != start.optim:
        changes["optim"] = (f"{start.optim} did not fit ({prior['optim'] / gb:.1f} GB at batch 1 > {usable:.1f} "
                            f"GB usable); 8-bit paged states")
    if chosen.load_in_4bit != start.load_in_4bit:
        weights = shape.total_params * (4 if precision == "fp32" else 2) / gb
        changes["load_in_4bit"] = (f"{precision} weights {weights:.1f} GB leave no room on a {card:g} GB card "
                                   f"(16-bit peak {prior['load_in_4bit'] / gb:.1f} GB > {usable:.1f} GB usable)")
    if chosen.lora_r != start.lora_r or chosen.target_modules != start.target_modules:
        targets = chosen.target_modules if isinstance(chosen.target_modules, str) else ",".join(chosen.target_modules)
        key = "lora_r" if "lora_r" in prior else "target_modules"
        changes["lora"] = (f"LOWERED from lora_preset={settings.lora.preset} (r={start.lora_r}) to r={chosen.lora_r} "
                           f"targets={targets}: r={start.lora_r} needs {prior[key] / gb:.1f} GB at best > "
                           f"{usable:.1f} GB usable; set lora_r or lora_preset to decide yourself")
    return Fit(chosen, peak, capacity, changes)


def memory_plan(settings: Settings, defaults: Any, *, seq_len: int | None = None) -> MemoryPlan:
    """The plan of the run ``defaults`` describe (their hardware, their chosen knobs)."""

    facts: HardwareFacts = defaults.hardware
    if facts.device == "cuda":
        assert facts.vram_gb is not None  # a CUDA HardwareFacts carries its card's memory
        capacity, label = int(facts.vram_gb * GB), f"on {facts.gpu_name}"
    elif facts.ram_gb:
        capacity, label = int(facts.ram_gb * GB), "in this machine's RAM (CPU training)"
    else:
        capacity, label = None, "CPU RAM size unknown"
    knobs = Knobs(defaults.load_in_4bit, defaults.batch_size, defaults.optim, defaults.lora_r, defaults.lora_alpha,
                  defaults.target_modules)
    ps = plan_settings(settings, knobs, precision=defaults.precision, checkpointing=defaults.gradient_checkpointing,
                       device=facts.device, seq_len=seq_len)
    shape = model_shape(settings.model.name, trust_remote_code=settings.model.trust_remote_code)
    plan = make_plan(shape, ps, capacity_bytes=capacity, capacity_label=label)
    return replace(plan, changes=tuple(defaults.changes))


def check_fit(plan: MemoryPlan, settings: Settings) -> None:
    """RUNTIME_WILL_NOT_FIT when the plan's peak exceeds the card, unless ``memory_check`` says otherwise."""
    if plan.fits is not False or plan.capacity_bytes is None or settings.training.memory_check != "refuse":
        return
    gb = 1024**3
    set_by_user = [arg for arg in ("load_in_4bit", "batch_size", "lora_r", "lora_preset", "target_modules", "optim",
                                   "gradient_checkpointing", "max_seq_length", "mode", "use_dora",
                                   "init_lora_weights", "chunked_loss") if given(settings, arg)]
    tips = "; ".join(f"{s.change} -> {s.total_bytes / gb:.1f} GB" for s in plan.suggestions) or "a larger card"
    raise BackpropagateError(
        "RUNTIME_WILL_NOT_FIT",
        f"the memory plan's peak is {plan.total_bytes / gb:.1f} GB, the card has {plan.capacity_bytes / gb:.1f} GB"
        + (f" (you set: {', '.join(set_by_user)})" if set_by_user else "")
        + f". Suggestions: {tips}. Nothing was loaded.",
        hint="Apply a suggestion (or leave those settings unset so the smart defaults fit the card), or pass "
             "memory_check='warn' (--memory-check warn) to train anyway.")
