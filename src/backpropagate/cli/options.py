"""Typer options generated from the option catalog (``backpropagate.option_catalog``, generated from the
settings fields), so a command never declares a Trainer option by hand and its help always shows the field's
description, allowed values and real default, in its panel. The catalog is plain data: no pydantic at start."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from ..option_catalog import OPTIONS
from ..option_spec import OptionSpec, help_text

Command = TypeVar("Command", bound=Callable[..., Any])
_CLI_TYPES: dict[str, type] = {"switch": bool, "on_off_auto": str, "int": int, "float": float, "path": Path,
                               "text": str}


def on_off_auto(value: str | None) -> bool | str | None:
    """CLI spelling of a bool-or-"auto" option; anything else is passed on for the coded error."""
    if value is None:
        return None
    return {"on": True, "true": True, "off": False, "false": False}.get(value.strip().lower(), value)


def with_trainer_options(select: Callable[[OptionSpec], bool] = lambda spec: True) -> Callable[[Command], Command]:
    """Add one Typer option per selected Trainer option to a command.

    The command declares its own arguments plus ``**options``; it receives the Trainer options there, by
    Trainer argument name, None where not given, ready for ``Trainer(**options)``.
    """
    specs = [spec for spec in OPTIONS if select(spec)]

    def decorate(command: Command) -> Command:
        own = inspect.signature(command, eval_str=True)
        params = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        clash = {p.name for p in params} & {spec.arg for spec in specs}
        if clash:
            raise ValueError(f"{command.__name__} declares Trainer option(s) by hand: {sorted(clash)}")
        params += [inspect.Parameter(spec.arg, inspect.Parameter.KEYWORD_ONLY, annotation=_CLI_TYPES[spec.kind],
                                     default=typer.Option(None, *spec.flags, help=help_text(spec),
                                                          rich_help_panel=spec.panel))
                   for spec in specs]

        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            options = {spec.arg: _parse(spec, values.pop(spec.arg, None)) for spec in specs}
            return command(**values, **options)

        wrapper.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
        return wrapper  # type: ignore[return-value]

    return decorate


def _parse(spec: OptionSpec, value: Any) -> Any:
    return on_off_auto(value) if spec.kind == "on_off_auto" else value
