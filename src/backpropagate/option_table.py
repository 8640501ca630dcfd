"""The README's "Trainer parameters" and environment-variable tables, generated from the settings fields.

``python -m backpropagate.option_table`` prints them; ``--write README.md`` replaces both marked sections,
and ``tests/test_options_complete.py`` checks that the README holds exactly this output. Defaults are the
fields' own (with the LoRA preset applied), never this machine's environment.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .config import Settings
from .options import OptionSpec, plain_value, trainer_options

MARKERS = {"parameters": ("<!-- option-table:begin -->", "<!-- option-table:end -->"),
           "environment": ("<!-- env-table:begin -->", "<!-- env-table:end -->")}
GENERAL = ("log_level", "log_json", "debug")  # Settings fields that are not Trainer options


def _cell(text: str) -> str:
    """Plain description text as a Markdown table cell (``<output_dir>`` is not an HTML tag)."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def _python_default(spec: OptionSpec) -> str:
    value = spec.default
    shown = f'"{value}"' if isinstance(value, str) else plain_value(value) if isinstance(value, Path) else repr(value)
    return f"`{shown}`" + (f" ({spec.preset} preset)" if spec.preset else "")


def _env_default(value: Any, preset: str | None = None) -> str:
    if value is None:
        return "unset"
    shown = str(value).lower() if isinstance(value, bool) else plain_value(value)
    return f"`{shown}`" + (f" ({preset} preset)" if preset else "")


def _flags(spec: OptionSpec) -> str:
    return ", ".join(" / ".join(f"`{half}`" for half in flag.split("/")) for flag in spec.flags)


def parameter_table() -> str:
    """One row per Trainer option: argument, CLI flag(s), default and the field's description."""
    rows = ["| Parameter | Flag | Default | Description |", "|---|---|---|---|"]
    rows += [f"| `{s.arg}` | {_flags(s)} | {_python_default(s)} | {_cell(s.description)} |"
             for s in trainer_options()]
    return "\n".join(rows)


def environment_table() -> str:
    """One row per ``BACKPROPAGATE_*`` variable the settings read."""
    rows = ["| Variable | Default | Same as |", "|---|---|---|"]
    rows += [f"| `{s.env}` | {_env_default(s.default, s.preset)} | `{s.arg}` |" for s in trainer_options()]
    for name in GENERAL:
        info = Settings.model_fields[name]
        rows.append(f"| `BACKPROPAGATE_{name.upper()}` | {_env_default(info.default)} | {_cell(str(info.description))} |")
    return "\n".join(rows)


def tables() -> dict[str, str]:
    """Each generated table by its marker name."""
    return {"parameters": parameter_table(), "environment": environment_table()}


def readme_section(text: str, name: str) -> str:
    """What stands between the markers of table ``name`` in ``text``."""
    begin, end = MARKERS[name]
    return text.split(begin, 1)[1].split(end, 1)[0].strip("\n")


def write(text: str) -> str:
    """``text`` with every marked table replaced by the generated one."""
    for name, table in tables().items():
        begin, end = MARKERS[name]
        before, rest = text.split(begin, 1)
        text = f"{before}{begin}\n{table}\n{end}{rest.split(end, 1)[1]}"
    return text


def main(argv: list[str] | None = None) -> int:
    """Print the tables, or with ``--write README.md`` put them between the README's markers."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("\n\n".join(tables().values()))
        return 0
    path = Path(args[-1] if args[0] == "--write" and len(args) > 1 else "README.md")
    path.write_text(write(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
