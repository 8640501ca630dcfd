"""Stopping a run on request: at the next step boundary, after a checkpoint, resumable.

A stop is cooperative. ``StopSignal.request()`` (what ``Trainer.stop()`` and the CLI's Ctrl-C handler
call) is only a flag; the loop looks at it after each optimizer step, writes a checkpoint and raises
:class:`StopRequested`. The run is then recorded ``interrupted`` and ``Trainer.train`` raises
:class:`RunInterrupted`, which names the run and the command that finishes it.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .guards import ThermalGuard

if TYPE_CHECKING:
    from .guards import ThermalGuard



class StopRequested(KeyboardInterrupt):
    """Raised inside the loop at a step boundary once a stop was requested (the checkpoint is written)."""


class RunInterrupted(KeyboardInterrupt):
    """A run that began and was interrupted: it is recorded ``interrupted`` and can be resumed."""

    def __init__(self, run_id: str, output_dir: Path, step: int | None) -> None:
        self.run_id, self.output_dir, self.step = run_id, Path(output_dir), step
        super().__init__(self.message)

    @property
    def resume_command(self) -> str:
        return f"backprop resume {self.run_id} --output {shlex.quote(str(self.output_dir))}"

    @property
    def message(self) -> str:
        where = f"after step {self.step}, checkpoint written" if self.step else "before its first checkpoint"
        return f"run {self.run_id} interrupted ({where}); resume with: {self.resume_command}"


class StopSignal:
    """A thread-safe stop flag with the reason it was raised."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def request(self, reason: str = "stop requested") -> None:
        self.reason = self.reason or reason
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def clear(self) -> None:
        self._event.clear()
        self.reason = ""


@dataclass
class RunControls:
    """What steers a run from outside its settings; ``Trainer.train`` and ``multi_run`` take one.

    ``stop`` is the signal ``Trainer.stop()`` raises (a checkpoint, then ``interrupted``). ``temperature``
    reads the GPU in degrees Celsius instead of NVML (thresholds from the settings), or is a configured
    ``ThermalGuard`` (own polling and clock).
    """
    stop: StopSignal = field(default_factory=StopSignal)
    temperature: Callable[[], float] | ThermalGuard | None = None

    def thermal_guard(self, training: Any, device: Any) -> ThermalGuard:
        """The guard of one run: the given one, one reading ``temperature``, else NVML (off on the CPU)."""
        if isinstance(self.temperature, ThermalGuard):
            return self.temperature
        return ThermalGuard.from_settings(training, device, read_temperature=self.temperature)


@contextmanager
def stop_on_sigint(stop: Callable[[], Any], *, say: Callable[[str], Any] | None = None) -> Iterator[None]:
    """While active, the first Ctrl-C calls ``stop()`` (a graceful stop after the current step); a second
    one interrupts at once. Outside the main thread (where handlers cannot be set) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    say = say or (lambda text: sys.stderr.write(text + "\n"))

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C stops at once
        say("stopping after the current step (writing a checkpoint); press Ctrl-C again to stop now")
        stop()

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
