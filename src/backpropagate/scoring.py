"""Score a saved adapter, and the base it was trained on, on a dataset: what ``backprop eval`` prints.

The loss is the one a run's held-out evaluation reports (``training.evaluation.held_out_totals``: mean
cross-entropy per label token, packed like training, no dropout, no gradient), so the numbers of a run
and of ``evaluate`` on the same rows agree. The base is scored with the adapter switched off, from the
same loaded weights (loaded as ``backprop chat`` loads them: ``chat.load_saved``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .chat import load_saved
from .config import declared_default
from .data import load_examples, tokenize_examples
from .errors import check_count
from .export.merge import resolve_source
from .logs import redact
from .training.evaluation import held_out_totals

MAX_SEQ_LENGTH: int = declared_default("max_seq_length")  # rows packed as training packs them


@dataclass(frozen=True)
class Score:
    """One model's result on the rows: ``name`` is "adapter", "base" or "model" (a full model folder)."""
    name: str
    loss: float
    perplexity: float


@dataclass
class EvalReport:
    """What ``evaluate`` measured: the scores, and on what (rows, label tokens, which base)."""
    source: str
    base_model: str | None
    data: str
    rows: int
    label_tokens: int
    scores: list[Score] = field(default_factory=list)

    def score(self, name: str) -> Score:
        return next(s for s in self.scores if s.name == name)

    def table(self) -> str:
        lines = [f"{self.rows} rows, {self.label_tokens} label tokens from {self.data}",
                 f"{'model':<8} {'loss':>10} {'perplexity':>12}"]
        lines += [f"{s.name:<8} {s.loss:>10.5f} {s.perplexity:>12.3f}" for s in self.scores]
        if len(self.scores) == 2:
            change = self.scores[0].loss - self.scores[1].loss
            lines.append(f"the adapter changes the loss by {change:+.5f} ({'lower' if change < 0 else 'not lower'})")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def evaluate(adapter: str | Path, data: Any, *, base: str | Path | None = None, include_base: bool = True,
             format: str | None = None, text_column: str | None = None,
             max_seq_length: int = MAX_SEQ_LENGTH,
             batch_size: int = 4, train_on_responses: bool = True, trust_remote_code: bool = False,
             progress: Callable[[int, int], Any] | None = None) -> EvalReport:
    """Held-out loss and perplexity of ``adapter`` (a folder ``trainer.save`` wrote, or a full model folder)
    and, with ``include_base``, of its base model on ``data`` (any format ``train`` reads).

    ``base`` replaces the base named in the adapter's ``adapter_config.json`` (needed when that name was
    redacted). Labels follow ``train_on_responses`` as in training: assistant replies only, by default.
    """
    check_count("max_seq_length", max_seq_length)
    check_count("batch_size", batch_size)
    source = resolve_source(adapter)  # a coded error before anything loads
    examples = load_examples(data, require_assistant=train_on_responses, format=format,
                             text_column=text_column).examples
    saved = load_saved(source.path, base=base, trust_remote_code=trust_remote_code)
    model, tokenizer, base_name = saved.model, saved.tokenizer, saved.base_name
    samples = tokenize_examples(tokenizer, examples, train_on_responses=train_on_responses)
    report = EvalReport(source=redact(str(source.path)), base_model=base_name and redact(base_name),
                        data=redact(str(data)), rows=len(samples), label_tokens=0)
    named = [("adapter", True), ("base", False)] if source.kind == "adapter" else [("model", True)]
    for name, adapter_on in named[:None if include_base else 1]:
        total, count = _totals(model, samples, tokenizer, adapter_on, max_seq_length, batch_size, progress)
        report.label_tokens = count
        report.scores.append(Score(name, total / count, math.exp(min(total / count, 700.0))))
    return report


def _totals(model: Any, samples: list[Any], tokenizer: Any, adapter_on: bool, max_seq_length: int,
            batch_size: int, progress: Any) -> tuple[float, int]:
    from contextlib import nullcontext

    switch = nullcontext() if adapter_on else model.disable_adapter()
    with switch:
        return held_out_totals(model, samples, tokenizer.pad_token_id, max_seq_length=max_seq_length,
                               batch_size=batch_size, progress=progress)
