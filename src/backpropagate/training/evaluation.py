"""Held-out evaluation of one run: which rows are held out, their loss every ``eval_steps``, early stopping
and the best adapter.

The loss is the mean cross-entropy per label token, packed like training (``forward_packed``), no dropout,
no gradient: what ``continual.forgetting.evaluate`` computes for a campaign's held-out slices, without its
whole-vocabulary logits.
A held-out row is drawn only among rows whose normalized text occurs once in the data (``data.dedup``), so
no held-out row is also trained on; the rows left out for being duplicated are counted in the log.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..atomic import write_file_atomically
from ..data import load_examples, tokenize_examples
from ..data.dedup import exact_duplicates
from ..data.packing import collate, pack
from ..data.rowset import example_text, normalize_text
from ..errors import BackpropagateError, invalid_value
from ..logs import redact
from .checkpoints import list_checkpoints
from .chunked_loss import forward_packed
from .engine import LoopHooks

AUTO_MIN_ROWS = 1000  # a dataset this large holds rows out by itself; a smaller one trains on every row
AUTO_FRACTION = 0.05
AUTO_MAX_ROWS = 500  # the automatic hold-out never exceeds this many rows
MAX_FRACTION = 0.5
BEST_WEIGHTS = "best-weights-step-{step:06d}.safetensors"  # by step: a resume loads the one its state names


@dataclass
class HoldOut:
    """The rows a run trains on and the rows it is evaluated on."""
    train: Any  # a data.LoadedData
    eval_examples: list[Any]
    eval_rows: list[int] = field(default_factory=list)  # 0-based rows of ``data`` held out (fraction mode)
    source: str = "none"  # "eval_data", "fraction", "auto" or "none"
    duplicates: int = 0  # rows not held out as their text occurs twice; with eval_data, its rows also trained on

    @property
    def enabled(self) -> bool:
        return bool(self.eval_examples)


@dataclass
class EvalRequest:
    """What ``train(eval_data=..., eval_fraction=...)`` asked for, checked; then the split it made."""
    eval_data: Any = None
    eval_fraction: float | None = None
    patience: int | None = None
    held_out: HoldOut | None = None

    @classmethod
    def check(cls, eval_data: Any, eval_fraction: float | None, training: Any, *,
              curriculum: bool = False) -> EvalRequest:
        check_request(eval_data, eval_fraction, curriculum=curriculum)
        return cls(eval_data, eval_fraction, training.early_stopping_patience)

    def split(self, data: Any, *, seed: int, defaults: Any, curriculum: bool, log: Any,
              recorded: dict[str, Any] | None = None) -> Any:
        """The rows to train on (a ``data.LoadedData``); the held-out ones are kept for ``evaluator``.

        ``recorded`` is a resumed run's own evaluation (its config's), used when nothing else is asked."""
        if recorded and self.eval_data is None and self.eval_fraction is None:
            self.eval_data, self.eval_fraction = recorded.get("eval_data"), recorded.get("eval_fraction")
        self.held_out = hold_out(data, eval_data=self.eval_data, eval_fraction=self.eval_fraction, seed=seed,
                                 require_assistant=defaults.train_on_responses, curriculum=curriculum, log=log)
        if self.patience is not None and not self.held_out.enabled:
            raise BackpropagateError(
                "INPUT_EVAL_MISSING", f"early_stopping_patience={self.patience} needs an evaluation, and this "
                f"run has none ({len(data.examples)} rows, fewer than {AUTO_MIN_ROWS} to hold rows out by itself).",
                hint="Pass eval_data (--eval-data) or eval_fraction (--eval-fraction).")
        return self.held_out.train

    def describe(self) -> dict[str, Any]:
        """The evaluation as the run's config stores it (after ``split``): a resume compares it and, when
        nothing else is asked, holds the same rows out."""

        held = self.held_out.eval_examples if self.held_out is not None else []
        path = str(Path(self.eval_data).expanduser().resolve()) if isinstance(self.eval_data, str | Path) else None
        return {"eval_data": None if path is None else redact(path), "eval_fraction": self.eval_fraction,
                "held_out_rows": len(held), "held_out_fingerprint": rows_fingerprint(held)}

    def evaluator(self, loaded: Any, defaults: Any, training: Any, session: Any, log: Any, *,
                  distributed: bool = False) -> Evaluator | None:
        """The run's evaluator over the tokenized held-out rows (None without any)."""
        if self.held_out is None or not self.held_out.enabled:
            return None
        if distributed:
            log.warning("evaluation_off", reason="multi-process runs do not evaluate yet")
            return None
        samples = tokenize_examples(loaded.tokenizer, self.held_out.eval_examples,
                                    train_on_responses=defaults.train_on_responses)
        return Evaluator(samples, loaded.tokenizer.pad_token_id, training, run_dir=session.run_dir, log=log,
                         batch_size=defaults.batch_size)


def rows_fingerprint(examples: list[Any]) -> str:
    """sha256 of the rows' normalized texts, in order: which rows a run holds out."""
    import hashlib

    digest = hashlib.sha256()
    for example in examples:
        digest.update(normalize_text(example_text(example)).encode("utf-8") + b"\0")
    return digest.hexdigest()


def check_request(eval_data: Any, eval_fraction: float | None, *, curriculum: bool = False) -> None:
    """Refuse contradictory evaluation arguments before any data or weight loads."""
    if eval_data is not None and eval_fraction is not None:
        raise BackpropagateError("INPUT_EVAL_CONFLICT", "eval_data and eval_fraction were both given.",
                                 hint="Pass a separate held-out dataset (eval_data) or a share of the data to "
                                      "hold out (eval_fraction), not both.")
    if eval_fraction is not None:
        if isinstance(eval_fraction, bool) or not isinstance(eval_fraction, int | float) \
                or not math.isfinite(eval_fraction) or not 0 < eval_fraction <= MAX_FRACTION:
            raise invalid_value("eval_fraction", eval_fraction, f"a share of the rows in (0, {MAX_FRACTION}]")
        if curriculum:
            raise BackpropagateError("INPUT_EVAL_CONFLICT", "curriculum=True keeps every row of the data in its "
                                     "order, so eval_fraction cannot hold rows out of it.",
                                     hint="Pass the held-out rows as a separate file (eval_data).")


def hold_out(data: Any, *, eval_data: Any = None, eval_fraction: float | None = None, seed: int,
             require_assistant: bool, curriculum: bool = False, log: Any = None) -> HoldOut:
    """Split ``data`` (a ``data.LoadedData``) into training and held-out rows; coded errors before any load."""
    if eval_data is not None:
        held = load_examples(eval_data, require_assistant=require_assistant).examples
        split = HoldOut(train=data, eval_examples=held, source="eval_data", duplicates=_shared(data.examples, held))
    else:
        fraction, source = eval_fraction, "fraction"
        if fraction is None and not curriculum and len(data.examples) >= AUTO_MIN_ROWS:
            fraction, source = min(AUTO_FRACTION, AUTO_MAX_ROWS / len(data.examples)), "auto"
        split = _split(data, fraction, seed, source) if fraction is not None else HoldOut(data, [])
    if split.enabled:
        _check_split(split)
    if log is not None:
        log.info("evaluation", held_out=len(split.eval_examples), training_rows=len(split.train.examples),
                 source=split.source, duplicates_not_held_out=split.duplicates,
                 reason=_reason(split, len(data.examples)))
    return split


def _reason(split: HoldOut, rows: int) -> str:
    if split.source == "auto":
        return f"{rows} rows >= {AUTO_MIN_ROWS}: {AUTO_FRACTION:.0%} held out (at most {AUTO_MAX_ROWS})"
    if split.source == "none":
        return f"{rows} rows < {AUTO_MIN_ROWS} and no eval_data / eval_fraction: no evaluation"
    if split.source == "eval_data" and split.duplicates:
        return f"eval_data: {split.duplicates} of its rows also occur in the training data"
    return f"asked for ({split.source})"


def _shared(train: list[Any], held: list[Any]) -> int:
    """How many held-out rows also occur (normalized) in the training rows: reported, not refused."""
    clusters = exact_duplicates([*train, *held]).clusters
    return sum(1 for c in clusters if c[0] < len(train) for i in c if i >= len(train))


def _split(data: Any, fraction: float, seed: int, source: str) -> HoldOut:
    """A seeded share of the rows that occur once in the data; the rest trains."""
    clusters = exact_duplicates(data.examples).clusters
    duplicated = {i for cluster in clusters for i in cluster}
    eligible = [i for i in range(len(data.examples)) if i not in duplicated]
    wanted = max(1, round(fraction * len(data.examples)))
    if not eligible:
        raise BackpropagateError("INPUT_EVAL_EMPTY", f"every one of the {len(data.examples)} rows occurs more than "
                                 "once, so no row can be held out without also being trained on.",
                                 hint="Remove duplicate rows first (backprop data dedup), or pass eval_data.")
    picked = sorted(random.Random(seed).sample(eligible, min(wanted, len(eligible))))
    chosen = set(picked)
    train = [e for i, e in enumerate(data.examples) if i not in chosen]
    return HoldOut(train=replace(data, examples=train), eval_examples=[data.examples[i] for i in picked],
                   eval_rows=picked, source=source, duplicates=len(duplicated))


def _check_split(split: HoldOut) -> None:
    if not split.train.examples:
        raise BackpropagateError("INPUT_EVAL_EMPTY", f"holding out {len(split.eval_examples)} rows leaves no row "
                                 "to train on.", hint="Hold out a smaller share (eval_fraction) or add rows.")
    if not any(_has_label(e) for e in split.eval_examples):
        raise BackpropagateError("INPUT_EVAL_EMPTY", f"the {len(split.eval_examples)} held-out rows have no "
                                 "assistant reply or text to score.",
                                 hint="Hold out rows that contain an assistant reply.")


def _has_label(example: Any) -> bool:
    if isinstance(example, str):
        return bool(example.strip())
    return any(m.get("role") == "assistant" and str(m.get("content") or "").strip() for m in example.messages)


class Evaluator:
    """Scores the held-out samples every ``eval_steps`` steps and at the end; stops early on no progress.

    Its state (history, best, patience count) lives in ``LoopState.extra["evaluation"]``, so a checkpoint
    carries it; the best weights are written to ``<run checkpoints>/best-weights-step-N.safetensors``.
    """

    def __init__(self, samples: list[Any], pad_token_id: int, training: Any, *, run_dir: Path, log: Any,
                 batch_size: int = 8, callback: Any = None) -> None:
        self.samples, self.pad_token_id, self.run_dir = samples, pad_token_id, Path(run_dir)
        self.max_seq_length, self.every = training.max_seq_length, training.eval_steps
        self.patience, self.min_delta = training.early_stopping_patience, training.early_stopping_min_delta
        self.callback, self.log = callback, log
        self.batch_size = batch_size
        self.chunked_loss = training.chunked_loss is not False
        self.history: list[tuple[int, float]] = []
        self.best_loss: float | None = None
        self.best_step: int | None = None
        self.bad = 0
        self.stop_reason: str | None = None
        self.best_weights: dict[str, Any] | None = None
        self.answers: Any = None  # an answers.SampleAnswers: its answers at evaluations resume with this state

    def wrap(self, hooks: Any) -> Any:
        """``hooks`` with this evaluation before each step's checkpoint, and restored after the checkpoint's."""
        inner_after, inner_restore = hooks.after_step, hooks.restore

        def after_step(state: Any) -> None:
            self.after_step(state)
            if inner_after is not None:
                inner_after(state)
            self._prune_best()

        def restore(state: Any) -> None:
            assert inner_restore is not None
            inner_restore(state)
            self.load_state(state)

        return LoopHooks(restore=restore if inner_restore is not None else None, after_step=after_step,
                         oom=hooks.oom)

    def after_step(self, state: Any) -> None:
        if state.step % self.every and state.step != state.steps_total:
            return
        loss = self.score(state.model)
        self.history.append((state.step, loss))
        metrics = {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}
        improved = self.best_loss is None or loss < self.best_loss - self.min_delta
        if improved:
            self.best_loss, self.best_step, self.bad = loss, state.step, 0
            self._keep_best(state.model, state.step)
        else:
            self.bad += 1
        self.log.info("evaluated", step=state.step, eval_loss=round(loss, 5),
                      eval_perplexity=round(metrics["perplexity"], 3), best_step=self.best_step)
        if self.callback is not None:
            self.callback.fire("on_evaluate", state.step, metrics)
        if self.patience is not None and self.bad >= self.patience and state.step < state.steps_total:
            self.stop_reason = (f"early stopping: no improvement of eval loss by more than {self.min_delta} in "
                                f"{self.bad} evaluations (best {self.best_loss:.5f} at step {self.best_step})")
            self.log.info("early_stopping", step=state.step, reason=self.stop_reason)
            state.stop_reason = self.stop_reason
        state.extra["evaluation"] = self.state_dict()

    def score(self, model: Any) -> float:
        """Mean loss per label token of the held-out samples now."""
        return held_out_loss(model, self.samples, self.pad_token_id, max_seq_length=self.max_seq_length,
                             batch_size=self.batch_size, chunked_loss=self.chunked_loss)

    def _keep_best(self, model: Any, step: int) -> None:
        """Keep the best weights in memory and on disk (atomically, named by step; older ones are removed
        once a checkpoint no longer needs them: see ``_prune_best``)."""
        from safetensors.torch import save_file

        self.best_weights = trainable(model)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in self.best_weights.items()}
        write_file_atomically(self.run_dir / BEST_WEIGHTS.format(step=step),
                              lambda path: save_file(tensors, str(path)))

    def _prune_best(self) -> None:
        """Delete best-weight files that neither the current state nor any kept checkpoint names."""
        needed = {self.best_step}
        for ref in list_checkpoints(self.run_dir):
            try:
                saved = json.loads((ref.path / "trainer_state.json").read_text(encoding="utf-8"))
                needed.add((saved.get("extra") or {}).get("evaluation", {}).get("best_step"))
            except (OSError, ValueError):
                continue  # unreadable: resume will not use it either
        for path in self.run_dir.glob(BEST_WEIGHTS.replace("{step:06d}", "*")):
            step = path.name.removeprefix("best-weights-step-").removesuffix(".safetensors")
            if step.isdigit() and int(step) not in needed:
                path.unlink(missing_ok=True)

    def discard_best_files(self) -> None:
        for path in self.run_dir.glob(BEST_WEIGHTS.replace("{step:06d}", "*")):
            path.unlink(missing_ok=True)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.history], "best_loss": self.best_loss, "best_step": self.best_step,
                "bad": self.bad, "stop_reason": self.stop_reason,
                "answers": [[step, list(a)] for step, a in self.answers.during] if self.answers else []}

    def load_state(self, state: Any) -> None:
        """Continue a resumed run's evaluation where its checkpoint left it (and its best weights)."""
        saved = state.extra.get("evaluation")
        if not saved:
            return
        self.history = [(int(s), float(v)) for s, v in saved["history"]]
        self.best_loss, self.best_step, self.bad = saved["best_loss"], saved["best_step"], saved["bad"]
        self.stop_reason = saved["stop_reason"]
        if self.answers is not None:
            self.answers.during = [(int(step), list(a)) for step, a in saved.get("answers", [])]
        path = self.run_dir / BEST_WEIGHTS.format(step=self.best_step or 0)
        if self.best_step is not None and path.is_file():
            from safetensors.torch import load_file

            self.best_weights = load_file(str(path))


def held_out_loss(model: Any, samples: list[Any], pad_token_id: int, *, max_seq_length: int, batch_size: int,
                  chunked_loss: bool = True) -> float:
    """Mean loss per label token, packed like training (rows never cut), in eval mode, without gradients.

    ``continual.forgetting.evaluate`` scores the same way but keeps whole logits for its accuracy; this one
    uses the training loss path (``forward_packed``, chunked where the model allows), so a large
    vocabulary costs no more memory here than in a training step.
    """
    total, count = held_out_totals(model, samples, pad_token_id, max_seq_length=max_seq_length,
                                   batch_size=batch_size, chunked_loss=chunked_loss)
    return total / count


def held_out_totals(model: Any, samples: list[Any], pad_token_id: int, *, max_seq_length: int, batch_size: int,
                    chunked_loss: bool = True, progress: Any = None) -> tuple[float, int]:
    """(summed loss, label tokens) of ``samples``, as ``held_out_loss`` scores them; ``progress(done, total)``
    is called after each batch."""
    import torch

    width = max([max_seq_length, *(len(s.input_ids) for s in samples)])
    rows = pack(samples, width, seed=None).rows
    was_training, total, count = model.training, 0.0, 0
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                loss_sum, n = forward_packed(model, collate(rows[start:start + batch_size], pad_token_id),
                                             chunked_loss=chunked_loss)
                total, count = total + float(loss_sum), count + n
                if progress is not None:
                    progress(min(start + batch_size, len(rows)), len(rows))
    finally:
        model.train(was_training)
    if not count:
        raise BackpropagateError("INPUT_EVAL_EMPTY", f"the {len(samples)} held-out rows have no label token to "
                                 "score.", hint="Hold out rows that contain an assistant reply.")
    return total, count


def trainable(model: Any) -> dict[str, Any]:
    """A detached CPU copy of the trainable weights."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: Any, weights: dict[str, Any]) -> None:
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(device=params[name].device, dtype=params[name].dtype))


def finish(evaluator: Evaluator | None, model: Any, target: Path, save: Any, *, keep_best: bool, steps: int,
           result: Any) -> dict[str, Any]:
    """Save the adapter(s) and return the run's fields: output path, steps done, evaluation results."""
    if evaluator is None:
        return {"output_path": str(save(target)), "steps": steps}
    if evaluator.best_weights is None:  # a resumed run whose best weights were lost: the last step's only
        final_path, best_path = save(target), None
    else:
        final_path, best_path = save_both(model, evaluator, target, save, keep_best=keep_best)
    evaluator.discard_best_files()  # the best adapter is saved: a full model's copies would only take disk
    return {"output_path": str(best_path if keep_best and best_path else final_path),
            "steps": len(result.loss_history) if evaluator.stop_reason else steps,
            "eval_history": list(evaluator.history), "best_eval_loss": evaluator.best_loss,
            "best_step": evaluator.best_step, "stop_reason": evaluator.stop_reason,
            "final_adapter_path": str(final_path), "best_adapter_path": best_path and str(best_path)}


def save_both(model: Any, evaluator: Evaluator, target: Path, save: Any, *, keep_best: bool) -> tuple[Path, Path]:
    """Save the final and the best adapters; the one ``keep_best`` chooses goes to ``target`` and stays loaded.

    Returns (final path, best path). The other goes beside ``target`` as ``<name>-last`` or ``<name>-best``.
    """
    assert evaluator.best_weights is not None
    final = trainable(model)
    if keep_best:
        final_path = save(target.with_name(target.name + "-last"))
        load_trainable(model, evaluator.best_weights)
        return final_path, save(target)
    final_path = save(target)
    load_trainable(model, evaluator.best_weights)
    best_path = save(target.with_name(target.name + "-best"))
    load_trainable(model, final)
    return final_path, best_path
