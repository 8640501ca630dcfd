"""What the shells need to know of one Trainer option, importable without pydantic: ``backprop --help`` reads
the generated catalog (``option_catalog``) of these records instead of the settings models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

ValueKind = Literal["switch", "on_off_auto", "int", "float", "path", "text"]
#: The sections of ``backprop train --help``, in order; an option's ``panel`` is one of them.
PANELS = ("Model", "Data", "LoRA", "Training", "Evaluation", "Checkpoints and guards", "Scale", "Tracking")


@dataclass(frozen=True)
class OptionSpec:
    """One Trainer option as the shells and the docs see it."""
    arg: str  # the Trainer argument (and CLI parameter) name
    group: str  # settings group: model, lora or training
    field: str  # the field in that group
    kind: ValueKind  # how a command line spells its value
    default: Any  # what a run gets when nothing sets it (the LoRA preset applied)
    preset: str | None  # "quality" when that default comes from the LoRA preset
    description: str
    flags: tuple[str, ...]  # Click declarations, e.g. ("--learning-rate", "--lr") or ("--packing/--no-packing",)
    changes_training: bool  # False: a resume may change it (how a run is looked after, not what it computes)
    campaign: bool  # whether `backprop multi-run` takes it
    panel: str = "Training"  # its section of --help (PANELS)
    choices: tuple[str, ...] = ()  # the values it allows, where they are a fixed list

    @property
    def env(self) -> str:
        """Its environment variable."""
        return f"BACKPROPAGATE_{self.group.upper()}__{self.field.upper()}"

    @property
    def names(self) -> tuple[str, ...]:
        """Every spelling on the command line (both halves of a switch)."""
        return tuple(name for flag in self.flags for name in flag.split("/"))


def plain_value(value: Any) -> str:
    """A default as a user types it: ``256``, ``auto``, ``./output``, ``q_proj,v_proj``."""
    if isinstance(value, Path):
        text = value.as_posix()
        return text if value.is_absolute() or text.startswith(".") else f"./{text}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def help_text(spec: OptionSpec) -> str:
    """CLI help: the description, the allowed values and the real default (unset ones say what unset means in
    the description)."""
    text = spec.description
    if spec.choices and not all(choice in text for choice in spec.choices):
        text += f" One of: {', '.join(spec.choices)}."
    if spec.default is None:
        return text
    shown = ("on" if spec.default else "off") if isinstance(spec.default, bool) else plain_value(spec.default)
    return f"{text} [default: {shown}{f', the {spec.preset} preset' if spec.preset else ''}]"
