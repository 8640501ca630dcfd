"""Typed configuration: defaults, ``BACKPROPAGATE_`` environment overrides, and Trainer arguments.

Precedence is: explicit ``Trainer(...)``/CLI argument > environment variable > LoRA preset > default.
Nested groups use ``__`` in environment names (``BACKPROPAGATE_LORA__R=8``). Every field's description is the
documentation of that option; the README's tables are generated from the same text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import COUNT_MAX, BackpropagateError
from .option_docs import OPTION_DOCS
from .presets import BASE_LEARNING_RATE, LORA_PRESETS, resolve_model_name

DEFAULT_MODEL = "Qwen/Qwen2.5-7B-Instruct"
FINITE = ConfigDict(allow_inf_nan=False)  # inf / nan are refused like any other out-of-range value


def _doc(option: str) -> str:
    return OPTION_DOCS[option]


class ModelSettings(BaseModel):
    """Which base model to fine-tune and how to load it (env: BACKPROPAGATE_MODEL__*)."""

    model_config = FINITE

    name: str = Field(DEFAULT_MODEL, description=_doc("model"))
    trust_remote_code: bool = Field(False, description=_doc("trust_remote_code"))
    load_in_4bit: bool = Field(False, description=_doc("load_in_4bit"))
    use_unsloth: bool = Field(True, description=_doc("use_unsloth"))
    unsloth_fallback: bool = Field(True, description=_doc("unsloth_fallback"))


class LoraSettings(BaseModel):
    """Low-rank adapter shape (env: BACKPROPAGATE_LORA__*)."""

    model_config = FINITE

    preset: Literal["quality", "fast"] = Field("quality", description=_doc("lora_preset"))
    r: int = Field(LORA_PRESETS["quality"].r, gt=0, le=65536, description=_doc("lora_r"))
    alpha: float = Field(LORA_PRESETS["quality"].alpha, gt=0, description=_doc("lora_alpha"))
    dropout: float = Field(0.05, ge=0, lt=1, description=_doc("lora_dropout"))
    target_modules: str | list[str] = Field("all-linear", description=_doc("target_modules"))
    use_dora: bool = Field(False, description=_doc("use_dora"))
    init_weights: Literal["default", "pissa", "loftq"] = Field("default", description=_doc("init_lora_weights"))

    @field_validator("target_modules", mode="before")
    @classmethod
    def _targets(cls, value: Any) -> Any:
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, str) and value != "all-linear" and "," in value:  # env / CLI: "q_proj,v_proj"
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value


class TrainingSettings(BaseModel):
    """The optimisation loop (env: BACKPROPAGATE_TRAINING__*)."""

    model_config = FINITE

    mode: Literal["lora", "full"] = Field("lora", description=_doc("mode"))
    learning_rate: float = Field(BASE_LEARNING_RATE, gt=0, description=_doc("learning_rate"))
    batch_size: int | Literal["auto"] = Field("auto", description=_doc("batch_size"))
    gradient_accumulation: int = Field(4, gt=0, le=COUNT_MAX, description=_doc("gradient_accumulation"))
    max_seq_length: int = Field(2048, gt=0, le=2**24, description=_doc("max_seq_length"))
    output_dir: Path = Field(Path("./output"), description=_doc("output_dir"))
    train_on_responses: bool = Field(True, description=_doc("train_on_responses"))
    packing: bool = Field(True, description=_doc("packing"))
    chunked_loss: bool | None = Field(None, description=_doc("chunked_loss"))
    memory_check: Literal["refuse", "warn", "off"] = Field("refuse", description=_doc("memory_check"))
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description=_doc("warmup_ratio"))
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description=_doc("lr_scheduler"))
    weight_decay: float = Field(0.0, ge=0, description=_doc("weight_decay"))
    max_grad_norm: float = Field(1.0, gt=0, description=_doc("max_grad_norm"))
    seed: int = Field(42, ge=0, le=2**32 - 1, description=_doc("seed"))
    optim: str | None = Field(None, description=_doc("optim"))
    gradient_checkpointing: bool | Literal["auto"] = Field("auto", description=_doc("gradient_checkpointing"))
    save_steps: int = Field(50, ge=0, le=COUNT_MAX, description=_doc("save_steps"))
    keep_checkpoints: int = Field(2, ge=1, le=COUNT_MAX, description=_doc("keep_checkpoints"))
    oom_recovery: bool = Field(True, description=_doc("oom_recovery"))
    report_to: str | list[str] = Field("auto", description=_doc("report_to"))
    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field("ddp", description=_doc("strategy"))
    deepspeed_config: Path | None = Field(None, description=_doc("deepspeed_config"))
    zero_stage: Literal[0, 1, 2, 3] | None = Field(None, description=_doc("zero_stage"))
    thermal_pause_celsius: float = Field(85.0, gt=0, description=_doc("thermal_pause_celsius"))
    thermal_resume_celsius: float = Field(75.0, gt=0, description=_doc("thermal_resume_celsius"))
    thermal_critical_celsius: float = Field(95.0, gt=0, description=_doc("thermal_critical_celsius"))

    @field_validator("thermal_resume_celsius", "thermal_critical_celsius")
    @classmethod
    def _thermal_order(cls, value: float, info: Any) -> float:
        pause = info.data.get("thermal_pause_celsius")
        if pause is not None and info.field_name == "thermal_resume_celsius" and value >= pause:
            raise ValueError(f"must be below thermal_pause_celsius ({pause})")
        if pause is not None and info.field_name == "thermal_critical_celsius" and value <= pause:
            raise ValueError(f"must be above thermal_pause_celsius ({pause})")
        return value

    @model_validator(mode="after")
    def _deepspeed_implies_strategy(self) -> TrainingSettings:
        if self.deepspeed_config is not None or self.zero_stage is not None:
            if self.strategy == "fsdp":
                raise ValueError("strategy='fsdp' cannot take deepspeed_config or zero_stage (DeepSpeed's)")
            self.strategy = "deepspeed"
        return self

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to(cls, value: Any) -> Any:
        from .training.tracking import parse_report_to

        if isinstance(value, tuple):
            value = list(value)
        try:
            parsed = parse_report_to(value)
        except BackpropagateError as exc:
            raise ValueError(exc.message) from None
        return parsed if parsed != [] else "none"

    @field_validator("optim")
    @classmethod
    def _optim(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from transformers.training_args import OptimizerNames

        valid = sorted(o.value for o in OptimizerNames)
        if value not in valid:
            raise ValueError(f"unknown optimizer; valid names: {', '.join(valid)}")
        return value

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "auto" and value.strip().isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and not 0 < value <= COUNT_MAX:
            raise ValueError(f"must be 1 .. {COUNT_MAX} or 'auto'")
        return value


class Settings(BaseSettings):
    """Everything configurable, read from ``BACKPROPAGATE_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="BACKPROPAGATE_", env_nested_delimiter="__",
                                      extra="ignore", validate_default=True)

    model: ModelSettings = Field(default_factory=ModelSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log verbosity.")
    log_json: bool | None = Field(None, description="JSON logs (True), console logs (False), or auto.")
    debug: bool = Field(False, description="Show full tracebacks on errors (same as --verbose).")
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    def source(self, arg: str) -> str:
        """Where a Trainer argument's value came from: argument, env, preset <name> or default."""
        return self._sources.get(arg, "default")


# Trainer/CLI argument name -> (settings group, field). One table, so both shells stay in step.
TRAINER_ARGS: dict[str, tuple[str, str]] = {
    "model": ("model", "name"),
    "trust_remote_code": ("model", "trust_remote_code"),
    "lora_r": ("lora", "r"),
    "lora_alpha": ("lora", "alpha"),
    "lora_dropout": ("lora", "dropout"),
    "target_modules": ("lora", "target_modules"),
    "lora_preset": ("lora", "preset"),
    "use_dora": ("lora", "use_dora"),
    "init_lora_weights": ("lora", "init_weights"),
    "load_in_4bit": ("model", "load_in_4bit"),
    "use_unsloth": ("model", "use_unsloth"),
    "unsloth_fallback": ("model", "unsloth_fallback"),
    **{name: ("training", name) for name in TrainingSettings.model_fields},
}


def resolve_settings(**overrides: Any) -> Settings:
    """Settings from the environment with explicit, non-None ``overrides`` (Trainer argument names) on top.

    The LoRA preset then fills in what neither set: rank, alpha, target modules and (for mode="lora")
    the learning rate, which is the base rate times the preset's factor. A preset short name as model
    becomes its hub id. ``settings.source(arg)`` says where each value came from.
    """
    unknown = sorted(set(overrides) - set(TRAINER_ARGS))
    if unknown:
        raise TypeError(f"unknown Trainer argument(s): {', '.join(unknown)}")
    try:
        base = Settings()
    except ValidationError as exc:
        raise _config_error(exc, from_env=True) from None
    sources = {arg: "env" for arg, (group, field) in TRAINER_ARGS.items()
               if field in getattr(base, group).model_fields_set}
    data = base.model_dump(exclude_unset=True)  # only what the environment set, so presets can fill the rest
    for arg, value in overrides.items():
        if value is not None:
            group, field = TRAINER_ARGS[arg]
            data.setdefault(group, {})[field] = value
            sources[arg] = "argument"
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise _config_error(exc, from_env=False) from None
    _apply_lora_preset(settings, sources)
    settings.model.name = resolve_model_name(settings.model.name)
    settings._sources = sources
    return settings


def _apply_lora_preset(settings: Settings, sources: dict[str, str]) -> None:
    preset = LORA_PRESETS[settings.lora.preset]
    tag = f"preset {preset.name}"
    values = {"lora_r": ("r", preset.r), "lora_alpha": ("alpha", float(preset.alpha)),
              "target_modules": ("target_modules", preset.target_modules if isinstance(preset.target_modules, str)
                                 else list(preset.target_modules))}
    for arg, (field, value) in values.items():
        if arg not in sources:
            setattr(settings.lora, field, value)
            sources[arg] = tag
    if "learning_rate" not in sources and settings.training.mode == "lora":
        settings.training.learning_rate = BASE_LEARNING_RATE * preset.lr_multiplier
        sources["learning_rate"] = tag


def _config_error(exc: ValidationError, *, from_env: bool) -> BackpropagateError:
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"]]
    if from_env:
        where = "BACKPROPAGATE_" + "__".join(loc).upper()
        return BackpropagateError("INPUT_CONFIG_INVALID", f"{where}: {err['msg']} (got {err.get('input')!r}).")
    flat = {v: k for k, v in TRAINER_ARGS.items()}.get(tuple(loc[:2]), ".".join(loc))
    return BackpropagateError("INPUT_INVALID_VALUE", f"{flat}={err.get('input')!r} is invalid: {err['msg']}.")
