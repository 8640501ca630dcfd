"""User hooks into a training run, and the result object a run returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..redaction import redact
from .answers import answers_text


@dataclass
class TrainingCallback:
    """Optional hooks; each is called with the arguments shown and may be left as None.

    ``on_log`` receives a dict after every step (step, loss, learning_rate, tokens, tokens_per_second,
    elapsed_seconds, steps_total) for progress displays.
    """

    on_step: Callable[[int, float], Any] | None = None
    on_epoch: Callable[[int], Any] | None = None
    on_save: Callable[[str], Any] | None = None
    on_complete: Callable[[TrainingRun], Any] | None = None
    on_error: Callable[[Exception], Any] | None = None
    on_log: Callable[[dict[str, Any]], Any] | None = None
    on_evaluate: Callable[[int, dict[str, float]], Any] | None = None
    """After each held-out evaluation: (step, {"loss": mean loss per label token, "perplexity": ...})."""
    shows_progress: bool = False
    """True when this callback draws a live display of its own (the CLI's bar): no second bar is drawn."""

    def fire(self, hook: str, *args: Any) -> None:
        fn = getattr(self, hook)
        if fn is not None:
            fn(*args)


@dataclass
class TrainingRun:
    """What ``Trainer.train`` returns."""

    run_id: str
    steps: int
    final_loss: float
    loss_history: list[float]
    output_path: str
    duration_seconds: float
    samples_seen: int
    tokens_trained: int = 0
    """Label-bearing tokens the loss was taken on."""
    dataset_format: str = ""
    truncated_samples: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    sample_answers: list[dict[str, Any]] = field(default_factory=list)
    """One {prompt, before, after} per sample prompt: greedy answers of the base and the tuned model (and
    ``evaluations``, [{step, answer}], when the run evaluated)."""
    eval_history: list[tuple[int, float]] = field(default_factory=list)
    """(step, held-out loss) of every evaluation; empty when the run held nothing out."""
    best_eval_loss: float | None = None
    best_step: int | None = None
    stop_reason: str | None = None
    """Why the run ended before its last step (early stopping); None when it ran every step."""
    final_adapter_path: str | None = None
    """With evaluation both adapters are kept: the last step's and the best evaluation's."""
    best_adapter_path: str | None = None

    def summary(self) -> str:
        """What the CLI prints at the end: id, losses, time, where the adapter is, evaluation, answers."""
        first = f"  (first {self.loss_history[0]:.4f})" if self.loss_history else ""
        lines = [f"run_id: {self.run_id}",
                 f"steps: {self.steps}  final loss: {self.final_loss:.4f}{first}  {self.duration_seconds:.1f}s",
                 f"adapter: {self.output_path}"]
        if self.eval_history:
            lines.append(f"eval loss: {self.eval_history[-1][1]:.4f}  best {self.best_eval_loss:.4f} at step "
                         f"{self.best_step}" + (f"  ({self.stop_reason})" if self.stop_reason else ""))
        if self.sample_answers:
            lines.append("before / after:\n" + redact(answers_text(self.sample_answers)))
        return "\n".join(lines)

    def __repr__(self) -> str:  # a notebook shows this: the summary, not every field
        return f"TrainingRun\n{self.summary()}"
