"""The building blocks of one training run; ``Trainer.train`` and every run of a campaign compose them.

A run reads top to bottom: ``open_session`` (which run, resume checks) -> ``load_data`` -> ``load_model``
-> ``training_samples`` -> ``loop_config`` -> ``run_segment`` (the loop under the session's checkpoints,
guards and controls) -> ``save_output``; ``run_failures`` closes the history row the same way whatever
stops it. A campaign runs several segments against one session (``RunSession.segment``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..atomic import write_dir_atomically
from ..config import Settings
from ..data import load_examples, tokenize_examples
from ..data.chat_template import template_traits
from ..data.curriculum import training_order
from ..data.formats import Conversation
from ..data.preview import template_notes
from ..errors import BackpropagateError
from ..logs import configure, redact
from .adapters import save_trained
from .callbacks import TrainingCallback
from .defaults import RunDefaults
from .engine import LoopConfig, train_loop
from .loader import LoadedModel, load_for_training
from .parallel import ProcessStrategy
from .session import RunSession
from .stop import RunControls, RunInterrupted


def open_session(output_dir: Path, parallel: ProcessStrategy, *, resume: str | bool | None, data: Any, steps: int | None,
                 format: str | None, text_column: str | None, curriculum: bool) -> RunSession:
    """The run to train (new, or the one to resume); with several processes rank 0 decides for all."""
    session = RunSession.open(output_dir, resume=resume, data=data, steps=steps, format=format,
                              text_column=text_column, curriculum=curriculum) if parallel.is_main else None
    shared = parallel.broadcast(session.shared() if session is not None else None)
    return session if session is not None else RunSession.follower(output_dir, shared, data)


def announce_rank(parallel: ProcessStrategy, log: Any) -> None:
    """Each rank says who it is; then only rank 0 keeps logging (one log for the run)."""
    if not parallel.distributed:
        return
    log.info("rank_started", rank=parallel.rank, world_size=parallel.world_size, local_rank=parallel.local_rank)
    if not parallel.is_main:
        configure(level="WARNING")


def load_data(session: RunSession, defaults: RunDefaults, log: Any) -> Any:
    """The session's dataset, read and its format detected (a ``data.LoadedData``)."""
    loaded = load_examples(session.data, require_assistant=defaults.train_on_responses, format=session.format,
                           text_column=session.text_column)
    log.info("dataset_loaded", format=loaded.report.name, rows=loaded.report.total_rows, reason=loaded.report.reason)
    return loaded


def share_checkpoint(session: RunSession, parallel: ProcessStrategy) -> None:
    """Every rank resumes from the checkpoint rank 0 chose."""
    chosen = parallel.broadcast(str(session.checkpoint.path) if session.checkpoint else None)
    if not parallel.is_main:
        session.adopt_checkpoint(chosen)


def load_model(settings: Settings, defaults: RunDefaults) -> LoadedModel:
    """Tokenizer + trainable model as the settings and the smart defaults ask (``training.loader``)."""
    return load_for_training(settings, defaults)


def training_samples(tokenizer: Any, data: Any, defaults: RunDefaults, *, curriculum: bool = False,
                     source: Any = None, log: Any = None) -> list[Any]:
    """The tokenized samples in training order: as read, or easy to hard with ``curriculum``."""
    samples = tokenize_examples(tokenizer, data.examples, train_on_responses=defaults.train_on_responses)
    if log is not None and any(isinstance(e, Conversation) for e in data.examples):
        for note in template_notes(template_traits(tokenizer), data.examples):
            log.warning("chat_data", note=note)
    if not curriculum:
        return samples

    order = training_order(source, data.examples, [len(s.input_ids) for s in samples])
    if log is not None:
        log.info("curriculum_order", rows=len(order), first_row=order[0] + 1, last_row=order[-1] + 1)
    return [samples[i] for i in order]


def loop_config(settings: Settings, defaults: RunDefaults, *, steps: int, seed: int,
                shuffle: bool = True) -> LoopConfig:
    """The loop settings of one run (an ``engine.LoopConfig``): the user's plus the smart defaults."""
    cfg = settings.training
    return LoopConfig(
        steps=steps, batch_size=defaults.batch_size, gradient_accumulation=defaults.gradient_accumulation,
        learning_rate=defaults.learning_rate, max_seq_length=cfg.max_seq_length, packing=cfg.packing,
        warmup_ratio=cfg.warmup_ratio, lr_scheduler=cfg.lr_scheduler, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, seed=seed, shuffle=shuffle, optim=defaults.optim,
        chunked_loss=cfg.chunked_loss is not False)


def run_segment(session: RunSession, loaded: LoadedModel, samples: Sequence[Any], loop: LoopConfig, *,
                callback: TrainingCallback, log: Any, controls: RunControls | None = None,
                parallel: ProcessStrategy | None = None, evaluator: Any = None) -> Any:
    """Train ``loop.steps`` steps under ``session``: resume from its checkpoint, checkpoint every
    ``save_steps``, thermal and stop checks after each step, OOM recovery; returns an ``engine.LoopResult``.
    An ``evaluation.Evaluator`` scores the held-out rows before each step's checkpoint (and may stop early)."""

    hooks = session.loop_hooks(loaded.model, callback=callback, log=log, controls=controls)
    if evaluator is not None:
        evaluator.callback = callback
        hooks = evaluator.wrap(hooks)
    return train_loop(loaded.model, samples, loop, pad_token_id=loaded.tokenizer.pad_token_id, callback=callback,
                      log=log, hooks=hooks, parallel=parallel)


def save_output(loaded: LoadedModel, target: Path, callback: TrainingCallback | None = None,
                state_dict: dict[str, Any] | None = None) -> Path:
    """Write the adapter (or the whole model) and the tokenizer to ``target``, atomically; ``state_dict``
    holds the gathered weights of a sharded model. PiSSA adapters are saved as plain LoRA."""

    def write(folder: Path) -> None:
        save_trained(loaded.model, loaded.tokenizer, folder, init_adapter_dir=loaded.init_adapter_dir,
                     state_dict=state_dict)

    saved = write_dir_atomically(target, write)
    if callback is not None:
        callback.fire("on_save", str(saved))
    return saved


@contextmanager
def run_failures(session: RunSession, callback: TrainingCallback, log: Any, *, what: str = "training",
                 on_failure: Callable[[], Any] | None = None) -> Iterator[None]:
    """Whatever stops a run closes its history row once: a stop or Ctrl-C -> ``interrupted`` and
    :class:`RunInterrupted` (with the resume command); an error -> ``failed`` and a coded error."""
    try:
        yield
    except BaseException as exc:
        if on_failure is not None:
            on_failure()
        session.fail(exc, log)
        if isinstance(exc, KeyboardInterrupt) and session.begun and session.main:
            interrupted = RunInterrupted(session.run_id, session.store.path.parent, session.last_checkpoint_step)
            log.warning("run_interrupted", step=interrupted.step, resume=interrupted.resume_command)
            raise interrupted from exc
        if not isinstance(exc, Exception):
            raise
        callback.fire("on_error", exc)
        log.error("run_failed", error=getattr(exc, "code", type(exc).__name__))
        if isinstance(exc, BackpropagateError):
            raise
        raise BackpropagateError("RUNTIME_TRAINING_FAILED",
                                 f"{what} failed: {type(exc).__name__}: {redact(str(exc))}") from exc
