"""Typed configuration: defaults, ``BACKPROPAGATE_`` environment overrides, and Trainer arguments.

Precedence is: explicit ``Trainer(...)``/CLI argument > environment variable > default. Nested groups
use ``__`` in environment names (``BACKPROPAGATE_LORA__R=8``). Every field's description is the
documentation of that option; the README's tables are generated from the same text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import BackpropagateError
from .option_docs import OPTION_DOCS

DEFAULT_MODEL = "Qwen/Qwen2.5-7B-Instruct"


def _doc(option: str) -> str:
    return OPTION_DOCS[option]


class ModelSettings(BaseModel):
    """Which base model to fine-tune and how to load it (env: BACKPROPAGATE_MODEL__*)."""

    name: str = Field(DEFAULT_MODEL, description=_doc("model"))
    trust_remote_code: bool = Field(False, description=_doc("trust_remote_code"))


class LoraSettings(BaseModel):
    """Low-rank adapter shape (env: BACKPROPAGATE_LORA__*)."""

    r: int = Field(256, gt=0, description=_doc("lora_r"))
    alpha: float = Field(512, gt=0, description=_doc("lora_alpha"))
    dropout: float = Field(0.05, ge=0, lt=1, description=_doc("lora_dropout"))
    target_modules: str | list[str] = Field("all-linear", description=_doc("target_modules"))


class TrainingSettings(BaseModel):
    """The optimisation loop (env: BACKPROPAGATE_TRAINING__*)."""

    learning_rate: float = Field(2e-4, gt=0, description=_doc("learning_rate"))
    batch_size: int | Literal["auto"] = Field("auto", description=_doc("batch_size"))
    gradient_accumulation: int = Field(4, gt=0, description=_doc("gradient_accumulation"))
    max_seq_length: int = Field(2048, gt=0, description=_doc("max_seq_length"))
    output_dir: Path = Field(Path("./output"), description=_doc("output_dir"))
    train_on_responses: bool = Field(True, description=_doc("train_on_responses"))
    packing: bool = Field(True, description=_doc("packing"))
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description=_doc("warmup_ratio"))
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description=_doc("lr_scheduler"))
    weight_decay: float = Field(0.0, ge=0, description=_doc("weight_decay"))
    max_grad_norm: float = Field(1.0, gt=0, description=_doc("max_grad_norm"))
    seed: int = Field(42, description=_doc("seed"))

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "auto" and value.strip().isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            raise ValueError("must be > 0 or 'auto'")
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


# Trainer/CLI argument name -> (settings group, field). One table, so both shells stay in step.
TRAINER_ARGS: dict[str, tuple[str, str]] = {
    "model": ("model", "name"),
    "trust_remote_code": ("model", "trust_remote_code"),
    "lora_r": ("lora", "r"),
    "lora_alpha": ("lora", "alpha"),
    "lora_dropout": ("lora", "dropout"),
    "target_modules": ("lora", "target_modules"),
    **{name: ("training", name) for name in TrainingSettings.model_fields},
}


def resolve_settings(**overrides: Any) -> Settings:
    """Settings from the environment with explicit, non-None ``overrides`` (Trainer argument names) on top."""
    unknown = sorted(set(overrides) - set(TRAINER_ARGS))
    if unknown:
        raise TypeError(f"unknown Trainer argument(s): {', '.join(unknown)}")
    try:
        base = Settings()
    except ValidationError as exc:
        raise _config_error(exc, from_env=True) from None
    data = base.model_dump()
    for arg, value in overrides.items():
        if value is not None:
            group, field = TRAINER_ARGS[arg]
            data[group][field] = value
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise _config_error(exc, from_env=False) from None


def _config_error(exc: ValidationError, *, from_env: bool) -> BackpropagateError:
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"]]
    if from_env:
        where = "BACKPROPAGATE_" + "__".join(loc).upper()
        return BackpropagateError("INPUT_CONFIG_INVALID", f"{where}: {err['msg']} (got {err.get('input')!r}).")
    flat = {v: k for k, v in TRAINER_ARGS.items()}.get(tuple(loc[:2]), ".".join(loc))
    return BackpropagateError("INPUT_INVALID_VALUE", f"{flat}={err.get('input')!r} is invalid: {err['msg']}.")
