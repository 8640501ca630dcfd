"""The option catalog: one record per Trainer option, read from its settings field in :mod:`.config`.

A field is the only declaration of an option (type, default, description, CLI flags, whether it changes
training, whether a campaign takes it); the ``backprop train``/``multi-run`` flags (``cli.options``), the
README tables (``option_table``) and the settings a resume may change (``training.resume``) are read from here.
"""

from __future__ import annotations

import functools
import inspect
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from .config import OPTION_GROUPS, TRAINER_ARGS, default_settings
from .option_spec import OptionSpec, ValueKind, help_text, plain_value

__all__ = ["OptionSpec", "help_text", "plain_value", "trainer_options", "option", "operational_options",
           "trainer_signature", "catalog_source"]

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
            changes_training=bool(extra.get("changes_training", True)), campaign=bool(extra.get("campaign", True)),
            panel=str(extra.get("panel", _GROUP_PANELS[group])), choices=_choices(info.annotation)))
    return tuple(specs)


_GROUP_PANELS = {"model": "Model", "lora": "LoRA", "training": "Training"}


def _choices(annotation: Any) -> tuple[str, ...]:
    """The values a Literal field allows (as a command line spells them), else ()."""
    members = _members(annotation) - {type(None)}
    return tuple(str(v) for m in members if get_origin(m) is Literal for v in get_args(m))


def option(arg: str) -> OptionSpec:
    """The option named ``arg`` (a Trainer argument name)."""
    return next(spec for spec in trainer_options() if spec.arg == arg)


def operational_options() -> frozenset[str]:
    """Options that change how a run is looked after, not what it computes: a resume may change them."""
    return frozenset(spec.arg for spec in trainer_options() if not spec.changes_training)


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


def catalog_source() -> str:
    """The text of ``option_catalog.py``: the catalog as literal records, for the shells to read without
    pydantic (``python -m backpropagate.options --write`` writes it; a test fails when it is stale)."""
    lines = ['"""The Trainer options for the shells, generated from the settings fields by',
             "``python -m backpropagate.options --write`` (do not edit: tests/test_options_complete.py fails when",
             'it differs from the declarations in config.py)."""', "", "from pathlib import PosixPath  # noqa: F401",
             "", "from .option_spec import OptionSpec", "", "OPTIONS: tuple[OptionSpec, ...] = ("]
    lines += [f"    {spec!r}," for spec in trainer_options()]
    lines += [")", "", "", "def declared(arg: str) -> OptionSpec:", '    """The option named ``arg`` (a Trainer argument name)."""',
              "    return next(spec for spec in OPTIONS if spec.arg == arg)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    target = Path(__file__).with_name("option_catalog.py")
    if sys.argv[1:] == ["--write"]:
        target.write_text(catalog_source(), encoding="utf-8")
    else:
        sys.stdout.write(catalog_source())
