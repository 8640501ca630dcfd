"""The README stays true: its parameter table is the Trainer's signature, and every `backprop` command it
shows is a real command with real options."""

from __future__ import annotations

import inspect
import re
import shlex
from pathlib import Path

from typer.main import get_command

from backpropagate import Trainer

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end != -1 else None]


def test_parameter_table_is_the_trainer_signature() -> None:
    table = _section(README.read_text(), "## Trainer parameters").split("\n### ")[0]
    documented = re.findall(r"^\| `([a-z_0-9]+)` \|", table, flags=re.M)
    params = [p for p in inspect.signature(Trainer.__init__).parameters if p != "self"]
    assert sorted(documented) == sorted(params)
    assert len(documented) == len(set(documented))


def _backprop_lines(text: str) -> list[str]:
    lines, joined = [], ""
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for raw in block.splitlines():
            line = raw.split("  #")[0].rstrip()
            joined = f"{joined} {line.rstrip(chr(92))}" if joined else line.rstrip(chr(92))
            if line.endswith("\\"):
                continue
            if joined.strip().startswith("backprop "):
                lines.append(joined.strip())
            joined = ""
    return lines


def test_every_readme_command_and_option_exists() -> None:
    from backpropagate import cli

    cli.register_commands()
    root = get_command(cli.app)
    lines = _backprop_lines(README.read_text())
    assert len(lines) > 20
    for line in lines:
        words = shlex.split(line.replace("$(", "").replace(")", ""))[1:]
        command, rest = root, words
        while rest and hasattr(command, "commands") and rest[0] in command.commands:
            command, rest = command.commands[rest[0]], rest[1:]
        assert command is not root or rest[0] in {"--version", "--help"}, line
        options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        for word in rest:
            if word.startswith("--"):
                assert word.split("=")[0] in options | {"--help"}, f"{word} in: {line}"
