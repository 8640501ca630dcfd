"""The option catalog: one record per Trainer option, read from its settings field in :mod:`.config`.

A field is the only declaration of an option (type, default, description, CLI flags, whether it changes
training, whether a campaign takes it); the ``backprop train``/``multi-run`` flags (``cli.options``), the
README tables (``option_table``) and the settings a resume may change (``training.resume``) are read from here.
"""

from __future__ import annotations

import functools
import inspect
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from .config import OPTION_GROUPS, TRAINER_ARGS, default_settings

ValueKind = Literal["switch", "on_off_auto", "int", "float", "path", "text"]


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

    @property
    def env(self) -> str:
        """Its environment variable."""
        return f"BACKPROPAGATE_{self.group.upper()}__{self.field.upper()}"

    @property
    def names(self) -> tuple[str, ...]:
        """Every spelling on the command line (both halves of a switch)."""
        return tuple(name for flag in self.flags for name in flag.split("/"))


def value_kind(annotation: Any) -> ValueKind:
    """How a field's type is spelled on a command line."""
    members = _members(annotation) - {type(None)}
    if members == {bool}:
        return "switch"
    if bool in members:
        return "on_off_auto"  # bool or "auto"
    if members and all(m is int or _literal_of(m, int) for m in members):
        return "int"
    if members == {float}:
        return "float"
    if members == {Path}:
        return "path"
    return "text"


def _members(annotation: Any) -> set[Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        return {m for arg in get_args(annotation) for m in _members(arg)}
    return {annotation}


def _literal_of(annotation: Any, kind: type) -> bool:
    return get_origin(annotation) is Literal and all(type(v) is kind for v in get_args(annotation))


def _flags(arg: str, kind: ValueKind, extra: dict[str, Any]) -> tuple[str, ...]:
    if "cli" in extra:
        return tuple(extra["cli"])
    dashed = arg.replace("_", "-")
    return (f"--{dashed}/--no-{dashed}",) if kind == "switch" else (f"--{dashed}",)


@functools.cache
def trainer_options() -> tuple[OptionSpec, ...]:
    """Every Trainer option, in the order of the settings groups (model, lora, training)."""
    defaults = default_settings()
    specs = []
    for arg, (group, name) in TRAINER_ARGS.items():
        info = OPTION_GROUPS[group].model_fields[name]
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        kind = value_kind(info.annotation)
        source = defaults.source(arg)
        specs.append(OptionSpec(
            arg=arg, group=group, field=name, kind=kind, default=getattr(getattr(defaults, group), name),
            preset=source.removeprefix("preset ") if source.startswith("preset ") else None,
            description=str(info.description), flags=_flags(arg, kind, extra),
            changes_training=bool(extra.get("changes_training", True)), campaign=bool(extra.get("campaign", True))))
    return tuple(specs)


def option(arg: str) -> OptionSpec:
    """The option named ``arg`` (a Trainer argument name)."""
    return next(spec for spec in trainer_options() if spec.arg == arg)


def operational_options() -> frozenset[str]:
    """Options that change how a run is looked after, not what it computes: a resume may change them."""
    return frozenset(spec.arg for spec in trainer_options() if not spec.changes_training)


def plain_value(value: Any) -> str:
    """A default as a user types it: ``256``, ``auto``, ``./output``, ``q_proj,v_proj``."""
    if isinstance(value, Path):
        text = value.as_posix()
        return text if value.is_absolute() or text.startswith(".") else f"./{text}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def help_text(spec: OptionSpec) -> str:
    """CLI help: the description and the real default (unset ones say what unset means in the description)."""
    if spec.default is None:
        return spec.description
    shown = ("on" if spec.default else "off") if isinstance(spec.default, bool) else plain_value(spec.default)
    return f"{spec.description} [default: {shown}{f', the {spec.preset} preset' if spec.preset else ''}]"


def trainer_signature() -> inspect.Signature:
    """``Trainer.__init__``'s signature, read from the declarations: ``model`` first, every other option a
    keyword defaulting to ``None`` (unset: the environment, the preset or the declared default decides)."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for spec in trainer_options():
        annotation: Any = str | Path if spec.kind == "path" else \
            OPTION_GROUPS[spec.group].model_fields[spec.field].annotation
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if spec.arg == "model" else inspect.Parameter.KEYWORD_ONLY
        params.append(inspect.Parameter(spec.arg, kind, default=None, annotation=annotation | None))
    return inspect.Signature(params, return_annotation=None)
