"""Fault injection for the resilience tests: our own functions patched from the tests, nothing in the product.

``inject(monkeypatch, hook)`` (or ``with faults(hook):``) calls ``hook(where, step, detail)`` where a fault can strike, and whatever the
hook raises goes through the run's own failure handling:

- ``("micro_batch", step, index)`` before each forward pass of a training step (index restarts when an OOM
  retry halves the batch);
- ``("checkpoint", step, file name)`` before each file of a checkpoint is written;
- ``("run_start", i, None)`` when run i of a multi-run campaign starts.

``slow_checkpoints_env(seconds)`` is the same for a subprocess (and every process it starts): its environment
puts ``tests/support/slow_checkpoints`` on ``PYTHONPATH``, whose ``sitecustomize`` sleeps after each
checkpoint file, so a test can kill a process in the middle of a write.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from backpropagate.continual import campaign
from backpropagate.training import checkpoints, engine, guards

Hook = Callable[[str, int, Any], None]
SLOW_CHECKPOINTS = Path(__file__).parent / "slow_checkpoints"
DELAY_VARIABLE = "BACKPROPAGATE_TESTS_CHECKPOINT_DELAY"  # read by slow_checkpoints/sitecustomize.py only


def inject(monkeypatch: pytest.MonkeyPatch, hook: Hook) -> None:
    """Call ``hook`` at every fault point of training runs started while the patch is active."""
    where = {"step": 0, "index": 0}
    run_step, forward, write_file, train_run = (guards.OomRecovery.run_step, engine.forward_packed,
                                                checkpoints.write_file, campaign.Campaign.train_run)

    def counted_step(self: guards.OomRecovery, state: Any, step: int, attempt: Callable[[], Any]) -> Any:
        def fresh_attempt() -> Any:
            where.update(step=step, index=0)
            return attempt()
        return run_step(self, state, step, fresh_attempt)

    def faulty_forward(*args: Any, **kwargs: Any) -> Any:
        hook("micro_batch", where["step"], where["index"])
        where["index"] += 1
        return forward(*args, **kwargs)

    def faulty_write(path: Path, writer: Callable[[Path], Any]) -> dict[str, Any]:
        hook("checkpoint", where["step"], path.name)
        return write_file(path, writer)

    def faulty_run(self: campaign.Campaign, i: int, *args: Any, **kwargs: Any) -> Any:
        hook("run_start", i, None)
        return train_run(self, i, *args, **kwargs)

    monkeypatch.setattr(guards.OomRecovery, "run_step", counted_step)
    monkeypatch.setattr(engine, "forward_packed", faulty_forward)
    monkeypatch.setattr(checkpoints, "write_file", faulty_write)
    monkeypatch.setattr(campaign.Campaign, "train_run", faulty_run)


@contextmanager
def faults(hook: Hook) -> Iterator[None]:
    """``inject(hook)`` for the duration of a ``with`` block."""
    with pytest.MonkeyPatch.context() as patch:
        inject(patch, hook)
        yield


def slow_checkpoints(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Sleep ``seconds`` after each checkpoint file written in this process."""
    write_file = checkpoints.write_file

    def slow_write(path: Path, writer: Callable[[Path], Any]) -> dict[str, Any]:
        digest = write_file(path, writer)
        time.sleep(seconds)
        return digest

    monkeypatch.setattr(checkpoints, "write_file", slow_write)


def slow_checkpoints_env(seconds: float, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) for a subprocess whose checkpoints sleep ``seconds`` after each file."""
    base = dict(os.environ if env is None else env)
    path = os.pathsep.join(p for p in (str(SLOW_CHECKPOINTS), base.get("PYTHONPATH", "")) if p)
    return {**base, "PYTHONPATH": path, DELAY_VARIABLE: str(seconds)}
