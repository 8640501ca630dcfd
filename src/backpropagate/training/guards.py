"""Guards for unattended runs: out-of-memory recovery and the GPU thermal pause.

Neither changes what is trained. OOM recovery halves the micro-batch and multiplies the accumulation by
the same factor (the same rows per optimizer step, the same token-weighted loss) and redoes the step
from its start; the thermal guard only checkpoints and waits. Both are used between or around steps by
the loop in :mod:`backpropagate.training.engine`, and by multi-run campaigns.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from ..errors import BackpropagateError
from .rng import capture_rng, restore_rng

T = TypeVar("T")


class StepState(Protocol):
    """What OOM recovery adjusts between attempts of a step (the loop's ``engine.LoopState``)."""

    stream: Any  # the data stream, rewound to the step's start before a retry
    optimizer: Any
    batch_size: int
    gradient_accumulation: int

MAX_RETRIES_AT_MIN_BATCH = 3


def is_oom(exc: BaseException) -> bool:
    """``torch.cuda.OutOfMemoryError``, or the generic ``RuntimeError`` some back-ends raise instead."""
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def smaller_micro_batch(batch_size: int) -> int | None:
    """The largest divisor of ``batch_size`` that is at most half of it (None at 1 row).

    A divisor keeps ``batch_size * gradient_accumulation`` (the rows per optimizer step) unchanged.
    """
    if batch_size <= 1:
        return None
    return max(d for d in range(1, batch_size // 2 + 1) if batch_size % d == 0)


def release_memory(optimizer: Any) -> None:
    import torch

    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class OomRecovery:
    """Runs one optimizer step's forward/backward passes, redoing the step with smaller micro-batches on OOM.

    Before a retry the gradients are dropped and the data stream and random generators are rewound to the
    start of the step, so no half-applied step ever reaches the optimizer. At one row per micro-batch the
    step is retried ``MAX_RETRIES_AT_MIN_BATCH`` times before ``RUNTIME_OOM_RECOVERY_EXHAUSTED``.
    """

    def __init__(self, enabled: bool = True, log: Any = None) -> None:
        self.enabled = enabled
        self.log = log

    def run_step(self, state: StepState, step: int, attempt: Callable[[], T]) -> T:
        stream_start = state.stream.state_dict()
        rng_start = capture_rng(python=False)
        retries = 0
        while True:
            try:
                return attempt()
            except Exception as exc:  # noqa: BLE001 - only OOM is handled; everything else re-raised
                if not is_oom(exc):
                    raise
                if not self.enabled:
                    raise BackpropagateError(
                        "RUNTIME_GPU_OOM", f"out of memory at step {step} with {state.batch_size} row(s) per "
                        "micro-batch (oom_recovery is off).") from exc
                reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            # Outside the except block, so the traceback (and the activations it holds) is already gone.
            release_memory(state.optimizer)
            smaller = smaller_micro_batch(state.batch_size)
            if smaller is None:
                retries += 1
                if retries > MAX_RETRIES_AT_MIN_BATCH:
                    raise BackpropagateError(
                        "RUNTIME_OOM_RECOVERY_EXHAUSTED",
                        f"step {step} ran out of memory at 1 row per micro-batch {retries} times: {reason}")
                self._warn("oom_retry", step=step, batch_size=1, retry=retries, of=MAX_RETRIES_AT_MIN_BATCH,
                           error=reason)
            else:
                state.gradient_accumulation *= state.batch_size // smaller
                state.batch_size = smaller
                self._warn("oom_batch_halved", step=step, batch_size=state.batch_size,
                           gradient_accumulation=state.gradient_accumulation,
                           rows_per_step=state.batch_size * state.gradient_accumulation, error=reason)
            state.stream.load_state_dict(stream_start)
            restore_rng(rng_start)

    def _warn(self, event: str, **fields: Any) -> None:
        if self.log is not None:
            self.log.warning(event, **fields)


class ThermalGuard:
    """Pauses training while the GPU is too hot, and stops it at the emergency temperature.

    ``read_temperature`` returns degrees Celsius (NVML in real runs, any callable in tests); ``sleep`` and
    ``clock`` are injectable too. Without a temperature source the guard is off, and ``status`` says why.
    """

    def __init__(self, read_temperature: Callable[[], float] | None, *, pause_at: float = 85.0,
                 resume_below: float = 75.0, critical_at: float = 95.0, poll_seconds: float = 10.0,
                 sleep: Callable[[float], Any] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 off_reason: str = "no temperature source") -> None:
        if not resume_below < pause_at < critical_at:
            raise ValueError("thermal thresholds must satisfy resume < pause < critical")
        self.read_temperature = read_temperature
        self.pause_at, self.resume_below, self.critical_at = pause_at, resume_below, critical_at
        self.poll_seconds = poll_seconds
        self.sleep, self.clock = sleep, clock
        self.off_reason = off_reason
        self.source = "NVML"
        self.paused_seconds = 0.0

    @classmethod
    def from_settings(cls, training: Any, device: Any,
                      read_temperature: Callable[[], float] | None = None) -> ThermalGuard:
        """A guard reading ``read_temperature`` (another sensor: ``RunControls.temperature``), else the training
        GPU through NVML, or an inactive one saying why not."""
        thresholds = {"pause_at": training.thermal_pause_celsius,
                      "resume_below": training.thermal_resume_celsius,
                      "critical_at": training.thermal_critical_celsius}
        if read_temperature is not None:
            guard = cls(read_temperature, **thresholds)
            guard.source = "RunControls.temperature"
            return guard
        if getattr(device, "type", "cpu") != "cuda":
            return cls(None, off_reason="training on the CPU", **thresholds)
        reader, reason = nvml_reader(getattr(device, "index", None) or 0)
        return cls(reader, off_reason=reason, **thresholds)

    @property
    def enabled(self) -> bool:
        return self.read_temperature is not None

    @property
    def status(self) -> str:
        if not self.enabled:
            return f"off({self.off_reason})"
        return f"on({self.source}, pause>={self.pause_at:g}C, resume<{self.resume_below:g}C, " \
               f"stop>={self.critical_at:g}C)"

    def check(self, step: int, on_hot: Callable[[], Any], log: Any = None) -> float:
        """Between steps: return at once when cool; else ``on_hot()`` (a checkpoint), then wait or stop.

        Returns the seconds spent paused.
        """
        temperature = self._read(log)
        if temperature is None or temperature < self.pause_at:
            return 0.0
        on_hot()
        if temperature >= self.critical_at:
            self._critical(step, temperature, log)
        if log is not None:
            log.warning("thermal_pause", step=step, temperature=temperature, resume_below=self.resume_below)
        started = self.clock()
        while temperature is not None and temperature >= self.resume_below:
            self.sleep(self.poll_seconds)
            temperature = self._read(log)
            if temperature is not None and temperature >= self.critical_at:
                self._critical(step, temperature, log)
        paused = self.clock() - started
        self.paused_seconds += paused
        if log is not None:
            log.info("thermal_resume", step=step, temperature=temperature, paused_seconds=round(paused, 1))
        return paused

    def _critical(self, step: int, temperature: float, log: Any) -> None:
        if log is not None:
            log.error("thermal_critical", step=step, temperature=temperature, critical_at=self.critical_at)
        raise BackpropagateError(
            "RUNTIME_GPU_TEMPERATURE_CRITICAL",
            f"GPU at {temperature:g}C (>= {self.critical_at:g}C) after step {step}; stopped after a checkpoint.")

    def _read(self, log: Any) -> float | None:
        if self.read_temperature is None:
            return None
        try:
            return float(self.read_temperature())
        except Exception as exc:  # noqa: BLE001 - a failing sensor turns the guard off, never the run
            self.read_temperature = None
            self.off_reason = f"sensor failed: {type(exc).__name__}"
            if log is not None:
                log.warning("thermal_guard_off", reason=self.off_reason)
            return None


def nvml_reader(torch_index: int = 0) -> tuple[Callable[[], float] | None, str]:
    """A function reading the GPU temperature through NVML (nvidia-ml-py), or None and the reason."""
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(_nvml_index(torch_index))
        pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
    except Exception as exc:  # noqa: BLE001 - NVMLError and its library-not-found variants
        return None, f"NVML unavailable: {exc}"

    def read() -> float:
        return float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))

    return read, "NVML"


def _nvml_index(torch_index: int) -> int:
    """NVML numbers every GPU; torch numbers the ones CUDA_VISIBLE_DEVICES lets it see."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if torch_index < len(visible) and visible[torch_index].isdigit():
        return int(visible[torch_index])
    return torch_index


def thermal_knob(guard: ThermalGuard) -> dict[str, str]:
    """The guard's entry for the start-up ``Degradation knobs:`` line."""
    return {"thermal_guard": guard.status}
