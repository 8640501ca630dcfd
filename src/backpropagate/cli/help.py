"""``--help`` in sections: each option's ``rich_help_panel`` (Model, Data, LoRA, ...; ``option_spec.PANELS``)
becomes a heading of the plain help text, so grouping costs no rich import at start-up."""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand

from ..option_spec import PANELS

_ORDER = ("Arguments", "Options", *PANELS)


class PanelCommand(TyperCommand):
    """A command whose help lists its arguments, then its options under their panels, in ``PANELS`` order."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            default = "Arguments" if param.param_type_name == "argument" else "Options"
            sections.setdefault(getattr(param, "rich_help_panel", None) or default, []).append(record)
        for name in sorted(sections, key=lambda n: _ORDER.index(n) if n in _ORDER else len(_ORDER)):
            with formatter.section(name):
                formatter.write_dl(sections[name])
