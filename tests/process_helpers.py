"""Helpers for tests that drive `backprop` processes and kill them at a chosen moment."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BACKPROP = str(Path(sys.executable).with_name("backprop"))


def wait_for(condition: Callable[[], Any], what: str, proc: subprocess.Popen, timeout: float = 240) -> Any:
    """Poll ``condition`` until it returns something truthy; fail if ``proc`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert proc.poll() is None, f"process ended (rc={proc.returncode}) before {what}"
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing may swallow it."""
