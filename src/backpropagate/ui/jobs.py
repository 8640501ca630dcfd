"""The UI's background job: one at a time, in the server process, so it outlives the browser tab.

A job (training, multi-run, export, resume) runs in a thread and writes its progress into a
:class:`JobState`; the page polls :meth:`JobRunner.snapshot` with a ``gr.Timer``. Reopening the page
therefore shows the live state of a job started from another tab. Stopping is cooperative: training
checks between optimizer steps, writes a checkpoint and stops as ``interrupted`` (resumable).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import CATALOG, BackpropagateError
from ..logs import redact

__all__ = ["JobContext", "JobRunner", "JobState", "StopRequested", "error_text"]

MAX_LOG_LINES = 200


class StopRequested(KeyboardInterrupt):
    """Raised inside a job when the user pressed Stop; a KeyboardInterrupt, so runs end ``interrupted``."""


def error_text(exc: BaseException) -> tuple[str, str, str]:
    """(code, message, hint) for any failure; unexpected ones become RUNTIME_UNEXPECTED, secrets redacted."""

    if isinstance(exc, BackpropagateError):
        return exc.code, redact(exc.message), redact(exc.hint or "")
    return ("RUNTIME_UNEXPECTED", redact(f"{type(exc).__name__}: {exc}"), CATALOG["RUNTIME_UNEXPECTED"].hint)


@dataclass
class JobState:
    """Everything the page shows about the current (or last) job."""

    kind: str = ""  # "train", "multi-run", "export", "resume"
    status: str = "idle"  # idle, running, stopping, completed, failed, stopped
    title: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)  # one dict per logged step
    log: list[str] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    error: tuple[str, str, str] | None = None  # (code, message, hint)

    @property
    def running(self) -> bool:
        return self.status in {"running", "stopping"}

    def latest(self) -> dict[str, Any]:
        """The newest training step's metrics (evaluations are recorded beside them)."""
        return next((m for m in reversed(self.metrics) if "loss" in m), {})

    def eta_seconds(self) -> float | None:
        """Remaining time from the mean pace so far (None before the first step)."""
        last = self.latest()
        step, total, elapsed = last.get("step"), last.get("steps_total"), last.get("elapsed_seconds")
        if not step or not total or elapsed is None:
            return None
        return max(0.0, elapsed / step * (total - step))


class JobContext:
    """What a job function gets: progress reporting and the stop flag."""

    def __init__(self, runner: JobRunner) -> None:
        self._runner = runner

    @property
    def stop_requested(self) -> bool:
        return self._runner.stop_requested

    def check_stop(self) -> None:
        if self.stop_requested:
            raise StopRequested("stopped from the UI")

    def on_stop(self, stop: Callable[[], Any]) -> None:
        """Call ``stop()`` when the page's Stop is pressed (at once if it already was): ``trainer.stop``."""
        self._runner.add_stop_handler(stop)

    def on_log(self, metrics: dict[str, Any]) -> None:
        """A TrainingCallback ``on_log`` hook: records one step."""
        keep = {k: v for k, v in metrics.items() if isinstance(v, int | float | str)}
        self._runner.update(lambda state: state.metrics.append(keep))

    def on_evaluate(self, step: int, metrics: dict[str, float]) -> None:
        """A TrainingCallback ``on_evaluate`` hook: records the held-out loss at ``step`` (the chart's eval line)."""
        point = {"step": step, "eval_loss": float(metrics["loss"])}
        self._runner.update(lambda state: state.metrics.append(point))

    def say(self, line: str) -> None:

        def append(state: JobState) -> None:
            state.log.append(redact(line))
            del state.log[:-MAX_LOG_LINES]

        self._runner.update(append)

    def set_result(self, **values: Any) -> None:
        self._runner.update(lambda state: state.result.update(values))


class JobRunner:
    """Runs at most one job at a time in a daemon thread; thread-safe snapshots for the page."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = JobState()
        self._stop = threading.Event()
        self._stop_handlers: list[Callable[[], Any]] = []  # what Stop calls in the running job (trainer.stop)
        self._thread: threading.Thread | None = None

    def snapshot(self) -> JobState:
        with self._lock:
            return copy.deepcopy(self._state)

    def update(self, change: Callable[[JobState], Any]) -> None:
        """Apply ``change`` to the current job's state under the lock (what a running job reports)."""
        with self._lock:
            change(self._state)

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._state.running

    def start(self, kind: str, title: str, fn: Callable[[JobContext], dict[str, Any] | None]) -> None:
        """Start ``fn(ctx)`` in the background; refused with STATE_RUN_IN_PROGRESS while a job runs."""
        with self._lock:
            if self._state.running:
                current = self._state
                raise BackpropagateError(
                    "STATE_RUN_IN_PROGRESS",
                    f"a {current.kind} job is already running in this UI ({current.title}); only one job runs "
                    "at a time.", hint="Wait for it to finish, or press Stop on its page first.")
            self._stop.clear()
            self._stop_handlers = []
            self._state = JobState(kind=kind, status="running", title=title, started_at=time.time())
            ctx = JobContext(self)
            self._thread = threading.Thread(target=self._run, args=(fn, ctx), name=f"ui-job-{kind}", daemon=True)
            self._thread.start()

    def _run(self, fn: Callable[[JobContext], dict[str, Any] | None], ctx: JobContext) -> None:
        status, error, result = "completed", None, None
        try:
            result = fn(ctx)
        except StopRequested:
            status = "stopped"
        except KeyboardInterrupt:  # a stop raised through a library that re-wrapped it
            status = "stopped"
        except Exception as exc:  # noqa: BLE001 - the job's failure is shown on the page, not raised
            status, error = "failed", error_text(exc)
        with self._lock:
            if result:
                self._state.result.update(result)
            self._state.status, self._state.error, self._state.ended_at = status, error, time.time()

    def stop(self) -> bool:
        """Ask the running job to stop at its next safe point; False when nothing runs."""
        with self._lock:
            if not self._state.running:
                return False
            self._state.status = "stopping"
            handlers = list(self._stop_handlers)
        self._stop.set()
        for handler in handlers:
            handler()
        return True

    def add_stop_handler(self, stop: Callable[[], Any]) -> None:
        with self._lock:
            self._stop_handlers.append(stop)
        if self._stop.is_set():
            stop()

    def wait(self, timeout: float | None = None) -> JobState:
        """Block until the current job ends (for tests and the CLI); returns its final state."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.snapshot()
