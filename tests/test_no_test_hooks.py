"""The product carries no test hooks: faults are injected from tests/support/faults.py by patching our functions."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import backpropagate
from backpropagate import RunControls, Trainer

PACKAGE = Path(backpropagate.__file__).parent


def test_run_controls_steer_a_run_and_nothing_else() -> None:
    assert [f.name for f in dataclasses.fields(RunControls)] == ["stop", "temperature"]


def test_no_test_only_variable_parameter_or_attribute_ships() -> None:
    sources = {path: path.read_text(encoding="utf-8") for path in PACKAGE.rglob("*.py")}
    assert not [path for path, text in sources.items() if "BACKPROPAGATE_TEST" in text]
    assert not [path for path, text in sources.items() if "fault_hook" in text or "FaultHook" in text]
    assert "hardware" not in vars(Trainer("qwen2.5-0.5b"))  # what-ifs go through plan(vram_gb=) / smart_defaults(hw)
    assert "fault" not in inspect.signature(Trainer.train).parameters
