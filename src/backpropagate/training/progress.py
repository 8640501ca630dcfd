"""What a user sees while a run trains, wherever they are.

A live bar (step, loss, tokens/s, ETA, eval loss, "run 2/3") in a terminal or a Jupyter notebook; where no bar
can show (a log file, a pipe, ``progress=False``) a ``step`` log line every ``logging_steps`` steps. At the same
steps the run history records how far the run is, so ``list-runs`` and the UI show a running run's real state.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from typing import Any

from ..config import TrainingSettings
from .callbacks import TrainingCallback

Record = Callable[[int, float], None]  # (completed steps, last loss) -> the run history


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (where stderr is no terminal but a bar still shows)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def interactive() -> bool:
    """A person watches this output live: a terminal or a notebook."""
    try:
        return in_notebook() or bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # a replaced stderr without isatty, or a closed one
        return False


def _bar(label: str) -> Any:
    """tqdm's notebook widget in Jupyter (when ipywidgets is there), its text bar elsewhere."""
    if in_notebook():
        try:
            from tqdm.notebook import tqdm

            return tqdm(desc=label, unit="step")
        except ImportError:  # no ipywidgets: tqdm's text bar still updates in place in the cell
            pass
    from tqdm import tqdm as text_tqdm

    return text_tqdm(desc=label, unit="step", file=sys.stderr, ncols=shutil.get_terminal_size().columns)  # 0 wide: 80


class RunProgress:
    """The bar or the log lines of one ``train()`` or ``multi_run()``; ``wrap`` feeds it from the run's callback."""

    def __init__(self, training: TrainingSettings, log: Any, *, shown_elsewhere: bool = False,
                 record: Record | None = None, main: bool = True) -> None:
        live = interactive()
        wanted = training.progress if training.progress is not None else live
        shown_elsewhere = shown_elsewhere or not main  # one process of a multi-process run reports: rank 0
        self.show_bar = bool(wanted) and not shown_elsewhere
        self.bar: Any = None  # made at the first step, so its clock starts with training, after the start-up lines
        self.lines = main and not (live and (self.show_bar or shown_elsewhere))
        self.every = training.logging_steps
        self.log, self.record = log, record if main else None
        self._eval = ""

    def wrap(self, inner: TrainingCallback) -> TrainingCallback:
        """``inner`` plus this display, on every step and evaluation."""

        def on_log(metrics: dict[str, Any]) -> None:
            inner.fire("on_log", metrics)
            self.on_log(metrics)

        def on_evaluate(step: int, metrics: dict[str, float]) -> None:
            inner.fire("on_evaluate", step, metrics)
            self._eval = f"{metrics['loss']:.4f}"

        return TrainingCallback(on_step=inner.on_step, on_epoch=inner.on_epoch, on_save=inner.on_save,
                                on_complete=inner.on_complete, on_error=inner.on_error, on_log=on_log,
                                on_evaluate=on_evaluate, shows_progress=True)

    def on_log(self, metrics: dict[str, Any]) -> None:
        step, total, loss = int(metrics["step"]), int(metrics["steps_total"]), float(metrics["loss"])
        run = f"run {metrics['run']}/{metrics['runs']}" if "runs" in metrics else None
        if self.show_bar:
            self._update_bar(step, total, loss, metrics, run)
        every = self.every or max(1, total // 10)
        if step % every and step != total:
            return
        if self.lines:
            elapsed = float(metrics.get("elapsed_seconds", 0.0))
            eta = round(elapsed / step * (total - step)) if step and elapsed else None
            self.log.info("step", step=step, of=total, loss=round(loss, 4), **({"run": run} if run else {}),
                          tokens_per_second=round(float(metrics.get("tokens_per_second", 0.0)), 1), eta_seconds=eta,
                          **({"eval_loss": self._eval} if self._eval else {}))
        if self.record is not None:
            self.record(step, loss)

    def _update_bar(self, step: int, total: int, loss: float, metrics: dict[str, Any], run: str | None) -> None:
        if self.bar is None:
            self.bar = _bar("training")
            self.bar.n = self.bar.last_print_n = step - 1  # a resumed run starts at its checkpoint
        self.bar.total = total
        if run:
            self.bar.set_description(run, refresh=False)
        postfix = {"loss": f"{loss:.4f}", "tok/s": f"{float(metrics.get('tokens_per_second', 0.0)):.0f}"}
        self.bar.set_postfix(postfix | ({"eval": self._eval} if self._eval else {}), refresh=False)
        self.bar.update(step - self.bar.n)
        if step == total:  # the lines after the last step (saving, run_completed) start on their own line
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar, self.show_bar = None, False
