"""``backprop --help`` and ``backprop train --help`` answer from typer and the option catalog alone: none of
the libraries that make a start slow (pydantic-settings, structlog, rich, torch, ...) is imported. The
catalog the help reads is the one the settings declare, and the options sit in their panels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backpropagate.option_spec import PANELS
from backpropagate.options import catalog_source

CATALOG = Path(__file__).resolve().parents[1] / "src" / "backpropagate" / "option_catalog.py"
# pydantic itself is typer's (0.29 builds each parameter's converter with it); pydantic-settings is ours.
SLOW = {"pydantic_settings", "structlog", "rich", "torch", "transformers", "peft", "gradio", "numpy",
        "datasets", "yaml", "httpx", "huggingface_hub"}
_PROBE = """
import json, sys
sys.argv = ["backprop", *sys.argv[1:]]
from backpropagate.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
sys.stderr.write(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def _help(*args: str) -> tuple[str, int, set[str]]:
    out = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=120)
    report = json.loads(out.stderr.strip().splitlines()[-1])
    return out.stdout, report["code"], set(report["modules"])


@pytest.mark.parametrize("args", [("--help",), ("train", "--help"), ("multi-run", "--help"), ("chat", "--help")])
def test_help_imports_none_of_the_slow_libraries(args: tuple[str, ...]) -> None:
    text, code, modules = _help(*args)
    assert code == 0 and "Usage: backprop" in text
    assert not modules & SLOW, sorted(modules & SLOW)


def test_train_help_is_grouped_in_panels_with_allowed_values() -> None:
    text, _, _ = _help("train", "--help")
    headings = [line[:-1] for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert [h for h in headings if h in PANELS] == list(PANELS)
    model = text.index("\nModel:")
    assert model < text.index("--model") < text.index("\nData:") < text.index("--data")  # --model first
    assert text.index("\nScale:") < text.index("--nproc")  # multi-machine flags in their own panel, at the end
    assert "One of: ddp, fsdp, deepspeed" in text or "\"ddp\"" in text


def test_the_catalog_is_generated_from_the_declarations() -> None:
    assert CATALOG.read_text(encoding="utf-8") == catalog_source(), \
        "stale: run python -m backpropagate.options --write"
