"""A rich progress bar fed by TrainingCallback.on_log (step, loss, tokens/s) and on_evaluate (eval loss)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any


class TrainingProgress:
    """The live bar of ``backprop train`` / ``multi-run`` / ``resume`` (rich, imported when one is made)."""

    def __init__(self, total: int | None, *, enabled: bool = True) -> None:
        self._progress = _rich_bar("training", ("loss {task.fields[loss]}", "{task.fields[eval]}",
                                                "{task.fields[tps]} tok/s"), transient=False, disable=not enabled)
        self._task = self._progress.add_task("train", total=total, loss="-", tps="-", eval="")
        self._started = False  # shown from the first step on, after the start-up log lines

    def set_total(self, total: int) -> None:
        self._progress.update(self._task, total=total)

    def _on_log(self, metrics: dict[str, Any]) -> None:
        if not self._started:
            self._progress.start()
            self._started = True
        self._progress.update(self._task, completed=metrics["step"], total=metrics["steps_total"],
                              loss=f"{metrics['loss']:.4f}", tps=f"{metrics['tokens_per_second']:.0f}")

    def _on_evaluate(self, step: int, metrics: dict[str, float]) -> None:
        self._progress.update(self._task, eval=f"eval {metrics['loss']:.4f}")

    def callback(self) -> Any:
        """The run's ``TrainingCallback`` feeding this bar."""
        from ..training.callbacks import TrainingCallback  # lazy: the training package (--help stays light)

        return TrainingCallback(on_log=self._on_log, on_evaluate=self._on_evaluate, shows_progress=True)

    def __enter__(self) -> TrainingProgress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._started:
            self._progress.stop()


@contextmanager
def batch_progress(label: str, *, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A bar for work counted in batches (``backprop eval``): yields ``progress(done, total)``; to stderr, so
    ``--json`` output stays clean."""
    from rich.console import Console

    bar = _rich_bar(label, (), console=Console(stderr=True), transient=True, disable=not enabled)
    task = bar.add_task(label, total=None)

    def progress(done: int, total: int) -> None:
        if not bar.live.is_started:  # shown from the first batch on: nothing printed before the work starts
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        yield progress
    finally:
        if bar.live.is_started:
            bar.stop()


def _rich_bar(label: str, fields: tuple[str, ...], **options: Any) -> Any:
    """A rich Progress: the label, the bar, done/total, ``fields`` (text columns), elapsed time and ETA. rich
    is imported here, when a bar is made, so --help does not pay for it."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), *map(TextColumn, fields),
                    TimeElapsedColumn(), TimeRemainingColumn(), **options)
