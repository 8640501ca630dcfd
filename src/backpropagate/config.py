"""Typed configuration: defaults, ``BACKPROPAGATE_`` environment overrides, and Trainer arguments.

Precedence is: explicit ``Trainer(...)``/CLI argument > environment variable > LoRA preset > default.
Nested groups use ``__`` in environment names (``BACKPROPAGATE_LORA__R=8``). Each Trainer option is declared
once, here, by its field (``option(...)``): its description is the option's documentation, and the CLI flags
(``cli.options``), the README tables (``python -m backpropagate.option_table --write README.md``) and the
settings a resume may change are all read from the fields.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
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
from .presets import BASE_LEARNING_RATE, LORA_PRESETS, resolve_model_name

DEFAULT_MODEL = "Qwen/Qwen2.5-7B-Instruct"
FINITE = ConfigDict(allow_inf_nan=False)  # inf / nan are refused like any other out-of-range value


def option(default: Any, description: str, *, flags: tuple[str, ...] = (), arg: str | None = None,
           changes_training: bool = True, campaign: bool = True, panel: str | None = None,
           **constraints: Any) -> Any:
    """A settings field that is also a Trainer argument and a CLI flag: the one place the option is declared.

    ``description`` is its documentation (CLI help, README); ``flags`` replace the flag derived from the name
    (``--lora-r``, ``--packing/--no-packing``); ``arg`` is the Trainer argument when it is not the field's
    name; ``changes_training=False`` lets a resume change it; ``campaign=False`` keeps it off ``multi-run``;
    ``panel`` is its section of ``--help`` (default: its group's, Model / LoRA / Training).
    """
    extra: dict[str, Any] = {"changes_training": changes_training, "campaign": campaign}
    if panel:
        extra["panel"] = panel
    if flags:
        extra["cli"] = list(flags)
    if arg:
        extra["arg"] = arg
    return Field(default, description=description, json_schema_extra=extra, **constraints)


#: The experiment trackers ``report_to`` may name.
TRACKERS = ("tensorboard", "mlflow", "wandb")


def parse_report_to(value: str | Sequence[str] | None) -> list[str] | str:
    """Normalize ``report_to``: "auto", [] for "none", or a list of known tracker names."""
    if value is None or value == "auto":
        return "auto"
    names = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if names in ([], ["none"]):
        return []
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise BackpropagateError("INPUT_INVALID_VALUE", f"report_to={value!r} names unknown tracker(s) "
                                 f"{', '.join(unknown)}; choose from auto, none, {', '.join(TRACKERS)}.")
    return names


class ModelSettings(BaseModel):
    """Which base model to fine-tune and how to load it (env: BACKPROPAGATE_MODEL__*)."""
    model_config = FINITE

    name: str = option(DEFAULT_MODEL, "Hub id, local folder, or a model preset's short name (qwen2.5-7b; "
                       "`backprop info --presets` lists them).", arg="model", flags=("--model", "-m"))
    trust_remote_code: bool = option(False, "Run model code shipped in the model repository. Off unless you "
                                     "trust the repo.")
    load_in_4bit: bool = option(False, "QLoRA: load the base weights in 4-bit NF4 with double quantization "
                                "(bitsandbytes, the qlora extra) and train a LoRA adapter on top.",
                                flags=("--load-in-4bit/--no-4bit",))
    use_unsloth: bool = option(True, "Load through Unsloth when it is installed and works here (CUDA only).",
                               flags=("--use-unsloth/--no-unsloth",))
    unsloth_fallback: bool = option(True, "If Unsloth cannot load (not installed, no CUDA, a broken build), fall "
                                    "back to transformers + peft and say so once at start-up; False makes that "
                                    "a hard error.", changes_training=False)


class LoraSettings(BaseModel):
    """Low-rank adapter shape (env: BACKPROPAGATE_LORA__*)."""
    model_config = FINITE

    preset: Literal["quality", "fast"] = option(
        "quality", 'LoRA preset: "quality" (rank 256, alpha 512, all linear layers, learning rate x10) or "fast" '
        "(rank 16, alpha 32, q_proj+v_proj, base learning rate). Explicit arguments and env vars override its "
        "values.", arg="lora_preset")
    r: int = option(LORA_PRESETS["quality"].r, "LoRA rank (> 0); left unset, the LoRA preset's (quality 256, "
                    "fast 16), lowered to the model's widest targeted layer, with alpha (a higher rank only costs "
                    "time).", arg="lora_r", gt=0, le=65536)
    alpha: float = option(LORA_PRESETS["quality"].alpha, "LoRA scaling numerator (> 0); the update is scaled by "
                          "alpha / r. Left unset, the LoRA preset's (quality 512, fast 32).", arg="lora_alpha", gt=0)
    dropout: float = option(0.05, "Dropout on the LoRA input, in [0, 1).", arg="lora_dropout", ge=0, lt=1)
    target_modules: str | list[str] = option(
        "all-linear", 'Module names to adapt (comma-separated on the command line), or "all-linear" for every '
        "linear layer except the output head; left unset, the LoRA preset's (quality all-linear, fast "
        "q_proj,v_proj).")
    use_dora: bool = option(False, "Train a DoRA adapter (weight-decomposed LoRA: a learned magnitude per "
                            "output); needs peft >= 0.10.", flags=("--use-dora/--no-dora",))
    init_weights: Literal["default", "pissa", "loftq"] = option(
        "default", 'Adapter initialisation: "default" (B = 0), "pissa" (principal singular vectors of the base '
        'weights; saved as a plain LoRA adapter) or "loftq" (offsets the 4-bit quantization error; needs '
        "load_in_4bit=True).", arg="init_lora_weights")

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

    mode: Literal["lora", "full"] = option(
        "lora", '"lora" trains an adapter; "full" trains every weight (models up to 4.5 B parameters, the 4 B '
        "class) and saves a full model folder (<output_dir>/model).", campaign=False, panel="LoRA")
    learning_rate: float = option(
        BASE_LEARNING_RATE, "Peak learning rate (after warm-up). Left unset: 2e-4 times the LoRA preset's factor "
        '(quality 10x = 2e-3, fast 1x = 2e-4); mode="full" uses 2e-4.', flags=("--learning-rate", "--lr"), gt=0)
    batch_size: int | Literal["auto"] = option(
        "auto", 'Packed rows per micro-batch; "auto" picks from VRAM (4 for >= 24 GB, 2 for >= 16 GB, 1 below, '
        "2 on the CPU).")
    gradient_accumulation: int = option(
        4, 'Micro-batches per optimizer step. Left unset with batch_size "auto" on a GPU, raised to keep 16 rows '
        "per step (8 at batch 2, 16 at batch 1).", gt=0, le=COUNT_MAX)
    max_seq_length: int = option(2048, "Tokens per packed row; longer samples are truncated (and counted).",
                                 gt=0, le=2**24, panel="Data")
    output_dir: Path = option(Path("./output"), "Where the adapter (<output_dir>/lora), checkpoints and the run "
                              "history (runs.db) go.", flags=("--output", "-o"), changes_training=False, panel="Checkpoints and guards")
    train_on_responses: bool = option(
        True, "Take the loss on assistant tokens only (and the end-of-turn token that closes them); "
        "--train-on-all (False) trains on every token.", flags=("--train-on-responses/--train-on-all",), panel="Data")
    packing: bool = option(True, "Pack several samples into each row without padding; attention never crosses "
                           "samples. False puts one sample per row.", panel="Data")
    chunked_loss: bool | None = option(
        None, "Compute the loss a chunk of tokens at a time (at most 1024 tokens and 32 M logits), so the "
        "[tokens, vocabulary] fp32 logits never exist whole (same loss and gradients); unset (auto) is on. "
        "Multi-process runs and unknown architectures use the plain loss.")
    memory_check: Literal["refuse", "warn", "off"] = option(
        "refuse", 'On a GPU, before any weight loads: "refuse" stops a run whose memory plan does not fit the '
        'card (RUNTIME_WILL_NOT_FIT, with the plan\'s suggestions), "warn" logs it and trains anyway, "off" '
        "skips the check.")
    warmup_ratio: float = option(0.03, "Share of the steps spent warming the learning rate up, in [0, 1).",
                                 ge=0, lt=1)
    lr_scheduler: Literal["cosine", "linear", "constant"] = option(
        "cosine", "Learning-rate schedule after warm-up: cosine, linear or constant.")
    weight_decay: float = option(0.0, "AdamW weight decay (>= 0).", ge=0)
    max_grad_norm: float = option(1.0, "Gradient clipping norm (> 0).", gt=0)
    neftune_noise_alpha: float | None = option(
        None, "NEFTune: while training, add uniform noise of scale alpha / sqrt(tokens x width) to the input "
        "embeddings (Jain et al. 2023; 5 is a common value). Unset: no noise.", gt=0)
    seed: int = option(42, "Seed for data order, adapter init and dropout: same seed, same run.", ge=0, le=2**32 - 1)
    optim: str | None = option(
        None, 'Optimizer name as in transformers (e.g. "adamw_torch", "paged_adamw_8bit", "adafactor", "sgd"); '
        "unset picks paged_adamw_8bit on GPUs under 24 GB, adamw_torch_fused on larger ones, adamw_torch on the "
        "CPU.")
    gradient_checkpointing: bool | Literal["auto"] = option(
        "auto", 'Recompute activations in the backward pass to save memory: on, off, or "auto" (on for a GPU, '
        "off on the CPU).")
    save_steps: int = option(50, "Write a resumable checkpoint every this many optimizer steps (and always at the "
                             "end); 0 saves only at the end.", ge=0, le=COUNT_MAX, changes_training=False, panel="Checkpoints and guards")
    logging_steps: int | None = option(
        None, "Where no live bar shows (a log file, a pipe, progress=False): a log line with the loss every this "
        "many steps; the run history's progress is updated as often. Unset: a tenth of the run, at least 1.",
        ge=1, le=COUNT_MAX, changes_training=False, panel="Tracking")
    progress: bool | None = option(
        None, "A live progress bar (step, loss, tokens/s, ETA) in a terminal or a Jupyter notebook. Unset: shown "
        "where stderr is a terminal or in a notebook; --no-progress: log lines only.", changes_training=False, panel="Tracking")
    keep_checkpoints: int = option(2, "How many of the newest checkpoints of a run to keep (>= 1).", ge=1,
                                   le=COUNT_MAX, changes_training=False, panel="Checkpoints and guards")
    eval_steps: int = option(50, "With held-out rows (eval_data, eval_fraction, or automatic on 1000+ rows): "
                             "evaluate every this many optimizer steps, and at the end (> 0).", gt=0, le=COUNT_MAX,
                             campaign=False, panel="Evaluation")
    early_stopping_patience: int | None = option(
        None, "Stop after this many evaluations in a row without improvement of the held-out loss (a complete "
        "run); needs an evaluation. Unset: never stop early.", ge=1, le=COUNT_MAX, campaign=False, panel="Evaluation")
    early_stopping_min_delta: float = option(0.0, "The held-out loss must fall by more than this to count as an "
                                             "improvement (>= 0).", ge=0, campaign=False, panel="Evaluation")
    keep_best: bool = option(False, "Save the adapter of the best evaluation as the run's adapter (the last "
                             "step's goes to <name>-last); off: the last step's (the best goes to <name>-best).",
                             campaign=False, panel="Evaluation")
    oom_recovery: bool = option(
        True, "On a GPU out-of-memory error, halve the micro-batch, double the accumulation (same rows per step) "
        "and redo the step; False makes the first OOM a RUNTIME_GPU_OOM failure.", changes_training=False, panel="Checkpoints and guards")
    report_to: str | list[str] = option(
        "auto", 'Experiment trackers: "auto" (each one you set up: tensorboard when installed, mlflow when '
        "MLFLOW_TRACKING_URI is set, wandb when WANDB_API_KEY or WANDB_MODE is set or after `wandb login`; the "
        'log says which and why), "none", or names (a list, or comma-separated). Files go to the output '
        "directory; W&B named without credentials runs offline.", panel="Tracking")
    strategy: Literal["ddp", "fsdp", "deepspeed"] = option(
        "ddp", 'How the processes of a multi-process run (--nproc, torchrun, srun) share the model: "ddp" (each '
        'holds all of it), "fsdp" (PyTorch FSDP: weights, gradients and optimizer state sharded, one decoder '
        'layer gathered at a time) or "deepspeed" (DeepSpeed ZeRO, the deepspeed extra). One process ignores it.',
        changes_training=False, campaign=False, panel="Scale")
    deepspeed_config: Path | None = option(
        None, 'A DeepSpeed JSON config file (implies strategy="deepspeed"); batch sizes and clipping come from '
        'this run\'s settings ("auto" in the file), and it may not name an optimizer or scheduler.',
        flags=("--deepspeed-config", "--deepspeed"), changes_training=False, campaign=False, panel="Scale")
    zero_stage: Literal[0, 1, 2, 3] | None = option(
        None, 'DeepSpeed ZeRO stage (implies strategy="deepspeed"): 2 partitions optimizer state and gradients, '
        "3 the weights too; overrides the file's; unset means 2.", flags=("--zero-stage", "--zero"),
        changes_training=False, campaign=False, panel="Scale")
    thermal_pause_celsius: float = option(85.0, "GPU temperature at which training checkpoints and pauses (NVML; "
                                          "off on the CPU).", gt=0, changes_training=False, panel="Checkpoints and guards")
    thermal_resume_celsius: float = option(75.0, "A paused run continues once the GPU is below this temperature.",
                                           gt=0, changes_training=False, panel="Checkpoints and guards")
    thermal_critical_celsius: float = option(95.0, "At this GPU temperature training checkpoints and stops "
                                             "(RUNTIME_GPU_TEMPERATURE_CRITICAL).", gt=0, changes_training=False, panel="Checkpoints and guards")

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


class GeneralSettings(BaseSettings):
    """How backpropagate reports, for every command: read by ``logs.configure`` and the CLI's error printer."""
    model_config = SettingsConfigDict(env_prefix="BACKPROPAGATE_", env_nested_delimiter="__",
                                      extra="ignore", validate_default=True)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log verbosity: DEBUG, INFO, WARNING or ERROR.")
    log_json: bool | None = Field(None, description="1 switches logs to JSON lines; unset or 0, console lines.")
    debug: bool = Field(False, description="1 shows full tracebacks on errors, like --verbose.")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value


def general_settings() -> GeneralSettings:
    """The general settings from the environment; a bad value is INPUT_CONFIG_INVALID naming the variable."""
    try:
        return GeneralSettings()
    except ValidationError as exc:
        raise _config_error(exc, from_env=True) from None


class Settings(GeneralSettings):
    """Everything configurable, read from ``BACKPROPAGATE_*`` environment variables."""

    model: ModelSettings = Field(default_factory=ModelSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    def set_sources(self, sources: dict[str, str]) -> None:
        """Record where each Trainer argument's value came from (``resolve_settings`` does)."""
        self._sources = sources

    def source(self, arg: str) -> str:
        """Where a Trainer argument's value came from: argument, env, preset <name> or default."""
        return self._sources.get(arg, "default")


OPTION_GROUPS: dict[str, type[BaseModel]] = {"model": ModelSettings, "lora": LoraSettings,
                                             "training": TrainingSettings}


def _option_table() -> dict[str, tuple[str, str]]:
    """Trainer/CLI argument name -> (settings group, field), read from the fields' ``arg`` metadata."""
    table = {}
    for group, model in OPTION_GROUPS.items():
        for name, info in model.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            table[str(extra.get("arg", name))] = (group, name)
    return table


def declared_default(name: str) -> Any:
    """The default option ``name`` (a settings field) is declared with: what every other place that needs the
    default reads, so it is written once."""
    for model in OPTION_GROUPS.values():
        if name in model.model_fields:
            return model.model_fields[name].default
    raise KeyError(f"no option named {name!r}")


TRAINER_ARGS: dict[str, tuple[str, str]] = _option_table()
OPTION_DOCS: dict[str, str] = {arg: str(OPTION_GROUPS[group].model_fields[field].description)
                               for arg, (group, field) in TRAINER_ARGS.items()}


def resolve_settings(**overrides: Any) -> Settings:
    """Settings from the environment with explicit, non-None ``overrides`` (Trainer argument names) on top.

    The LoRA preset then fills in what neither set: rank, alpha, target modules and (for mode="lora")
    the learning rate, which is the base rate times the preset's factor. A preset short name as model
    becomes its hub id. ``settings.source(arg)`` says where each value came from.
    """
    unknown = sorted(set(overrides) - set(TRAINER_ARGS))
    if unknown:
        near = {name: difflib.get_close_matches(name, TRAINER_ARGS, n=1) for name in unknown}
        said = ", ".join(f"{name} (did you mean {near[name][0]}?)" if near[name] else name for name in unknown)
        raise BackpropagateError("INPUT_UNKNOWN_OPTION", f"unknown Trainer argument(s): {said}.")
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
    settings.set_sources(sources)
    return settings


def default_settings() -> Settings:
    """What a run gets with no argument and no environment: the field defaults with the LoRA preset applied.

    Documentation (CLI help, README tables) shows these, so the text never depends on the machine's env.
    """
    settings = Settings.model_construct(model=ModelSettings(), lora=LoraSettings(), training=TrainingSettings())
    sources: dict[str, str] = {}
    _apply_lora_preset(settings, sources)
    settings.set_sources(sources)
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
    by_field: dict[tuple[str, ...], str] = {v: k for k, v in TRAINER_ARGS.items()}
    flat = by_field.get(tuple(loc[:2]), ".".join(loc))
    return BackpropagateError("INPUT_INVALID_VALUE", f"{flat}={err.get('input')!r} is invalid: {err['msg']}.")
