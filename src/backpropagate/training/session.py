"""One training run's life on disk: its history row, its checkpoints, resuming it, and its guards.

The Trainer opens a session before loading anything, lets it check a resume (cheaply, before the model
loads), starts the history row once the model is ready, hands its hooks to the loop, and closes it.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import BackpropagateError, invalid_value
from ..logs import is_redacted, redact
from ..storage.store import RunRecord, RunStore
from .checkpoints import (
    LoadedCheckpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    restore_into,
    run_checkpoint_dir,
    step_dir_name,
    write_checkpoint,
)
from .engine import LoopHooks, LoopState
from .guards import OomRecovery, ThermalGuard
from .output_lock import OutputLock
from .parallel import Parallel
from .resume import choose_checkpoint, config_differences, pick_run, run_config
from .stop import RunControls, StopRequested

DEFAULT_STEPS = 100


class RunSession:
    """Checkpoints, history and guards of one run (new, or resumed under its old run id)."""

    def __init__(self, store: RunStore, run_id: str, record: RunRecord | None, *, data: Any, steps: int,
                 format: str | None, text_column: str | None, curriculum: bool = False, main: bool = True) -> None:
        self.main = main  # False on the other ranks of a multi-process run: they read, never write
        self.store = store
        self.run_id = run_id
        self.record = record
        self.data, self.steps, self.format, self.text_column = data, steps, format, text_column
        self.curriculum = curriculum
        self.settings: Any = None
        self.run_dir = run_checkpoint_dir(store.path.parent, run_id)
        self.config: dict[str, Any] = {}
        self.checkpoint: LoadedCheckpoint | None = None
        self.force = False
        self.differences: list[str] = []
        self.guard: ThermalGuard | None = None
        self.begun = False
        self.lock: OutputLock | None = None  # the output folder's lock, taken when training begins
        self._live_steps = False  # completed_steps was written between checkpoints (record_progress)
        self._last_saved = -1
        self._controls = RunControls()
        self._started = time.perf_counter()
        # A part of a longer run (one run of a campaign): its steps and losses follow those before it.
        self.step_offset = 0
        self.history_prefix: list[float] = []
        self.part: RunSession | None = None  # the part training now, which knows the newest checkpoint

    # ---- before the model loads ------------------------------------------------------------
    @classmethod
    def open(cls, output_dir: Path, *, resume: str | bool | None, data: Any, steps: int | None,
             format: str | None, text_column: str | None, curriculum: bool = False) -> RunSession:
        """Find the run to resume (coded errors for unknown, ambiguous, running or finished ones)."""
        store = RunStore.for_output(output_dir)
        store.check()
        record = pick_run(store, resume) if resume not in (None, False) else None
        if record is None:
            if data is None:
                raise invalid_value("data", None, "a dataset file, folder, hub name or datasets.Dataset")
            return cls(store, uuid.uuid4().hex, None, data=data, steps=steps or DEFAULT_STEPS, format=format,
                       text_column=text_column, curriculum=curriculum)
        saved = record.config.get("dataset", {})
        if data is None:
            if not record.dataset_path:
                raise invalid_value("data", None, f"the dataset: run {record.run_id[:8]} was trained on an "
                                    "in-memory dataset, pass it again")
            if is_redacted(record.dataset_path):
                raise BackpropagateError(
                    "INPUT_RECORDED_PATH_REDACTED", f"run {record.run_id[:8]} was trained on a dataset whose path "
                    f"held a credential; its history keeps only {record.dataset_path!r}.",
                    hint=f"Pass the dataset again: `backprop resume {record.run_id[:8]} --data <file>` "
                         "(or data=... to train); its content must be the run's own.")
            data = record.dataset_path
        return cls(store, record.run_id, record, data=data, steps=steps or record.steps,
                   format=format if format is not None else saved.get("format"),
                   text_column=text_column if text_column is not None else saved.get("text_column"),
                   curriculum=curriculum or bool(saved.get("curriculum")))

    @classmethod
    def follower(cls, output_dir: Path, shared: dict[str, Any], data: Any) -> RunSession:
        """The session of a rank other than 0: the run rank 0 opened (``shared``), without writing anything."""
        return cls(RunStore.for_output(output_dir), shared["run_id"], None, data=shared["data"] or data,
                   steps=shared["steps"], format=shared["format"], text_column=shared["text_column"],
                   curriculum=shared["curriculum"], main=False)

    def shared(self) -> dict[str, Any]:
        """What the other ranks need to follow this run (picklable)."""
        data = str(self.data) if isinstance(self.data, str | Path) else None
        return {"run_id": self.run_id, "data": data, "steps": self.steps, "format": self.format,
                "text_column": self.text_column, "curriculum": self.curriculum}

    def adopt_checkpoint(self, path: str | None) -> None:
        """A follower resumes from the checkpoint rank 0 chose."""
        self.checkpoint = load_checkpoint(Path(path)) if path else None

    def segment(self, run_dir: Path, *, steps: int, step_offset: int, history_prefix: list[float],
                log: Any) -> RunSession:
        """A part of this run with its own checkpoints in ``run_dir`` (a campaign's run i), written to this
        run's history row; it resumes from the newest good checkpoint in ``run_dir``, if any."""
        part = RunSession(self.store, self.run_id, self.record, data=self.data, steps=steps, format=self.format,
                          text_column=self.text_column, curriculum=self.curriculum, main=self.main)
        part.settings, part.config, part.force, part.differences = self.settings, self.config, self.force, []
        part.run_dir, part.step_offset, part.history_prefix = Path(run_dir), step_offset, list(history_prefix)
        part.begun = True
        ref = choose_checkpoint(part.run_dir, self.record, log, expected=[]) if self.record is not None else None
        if ref is not None:
            part.checkpoint = load_checkpoint(ref.path)
            log.info("resuming", from_step=ref.step, checkpoint=str(ref.path))
        self.part = part
        return part

    @property
    def resuming(self) -> bool:
        return self.record is not None

    def prepare(self, settings: Any, fingerprint: str, *, force: bool, log: Any,
                extra: dict[str, Any] | None = None) -> None:
        """Build the run config (plus ``extra``: the evaluation, the sample prompts); when resuming, compare
        it with the run's and pick the checkpoint."""
        self.settings = settings
        self.force = force
        self.config = {**run_config(settings, steps=self.steps, data_path=_data_path(self.data),
                                    fingerprint=fingerprint, format=self.format, text_column=self.text_column,
                                    curriculum=self.curriculum), **(extra or {})}
        if self.record is None or not self.main:
            return
        self.differences = config_differences(self.record.config, self.config)
        if self.differences and not force:
            raise BackpropagateError(
                "INPUT_RESUME_MISMATCH", f"run {self.run_id[:8]} was started with other data or settings: "
                f"{'; '.join(self.differences)}.")
        if self.differences:
            log.warning("resume_forced", differences=self.differences)
        ref = choose_checkpoint(self.run_dir, self.record, log)
        if ref is None:
            log.warning("resume_from_start", reason="the run wrote no checkpoint before it stopped")
            return
        self.checkpoint = load_checkpoint(ref.path)
        log.info("resuming", from_step=ref.step, checkpoint=str(ref.path))

    # ---- training --------------------------------------------------------------------------
    def begin(self, *, model_name: str, batch_size: int | None = None,
              progress: tuple[int, list[float]] | None = None) -> None:
        """Write the history row (new run) or mark the run running again (resume); ``progress`` is the
        (completed steps, losses) a resumed campaign restarts from, which no step checkpoint holds."""
        if batch_size is not None:
            self.config["batch_size_resolved"] = batch_size
        history = list(self.checkpoint.trainer_state["loss_history"]) if self.checkpoint else []
        done, history = progress or (self.checkpoint.step if self.checkpoint else 0, history)
        if self.main:
            self.lock = OutputLock.acquire(self.store.path.parent)
        if not self.main:
            pass
        elif self.record is None:
            self.store.start(run_id=self.run_id, model=redact(model_name), dataset_path=_data_path(self.data),
                             dataset_hash=self.config["dataset"]["fingerprint"], config=self.config,
                             steps=self.steps)
        else:
            self.store.resume(self.run_id, config=self.config, dataset_hash=self.config["dataset"]["fingerprint"],
                              steps=self.steps, completed_steps=done, loss_history=history)
        self.begun = True
        self._started = time.perf_counter()

    def loop_hooks(self, model: Any, *, callback: Any, log: Any, controls: RunControls | None = None) -> LoopHooks:
        """Hooks for ``train_loop``: restore, checkpoint + thermal and stop checks after each step, OOM policy."""
        training = self.settings.training
        controls = controls or RunControls()
        device = next(model.parameters()).device  # rank 0 alone reads the temperature
        self.guard = controls.thermal_guard(training, device) if self.main else \
            ThermalGuard.from_settings(training, None)
        self._callback, self._log, self._controls = callback, log, controls
        log.info("guards", oom_recovery=training.oom_recovery, thermal_guard=self.guard.status,
                 save_steps=training.save_steps, keep_checkpoints=training.keep_checkpoints)

        def restore(state: LoopState) -> None:
            assert self.checkpoint is not None
            batch_changed = any(d.startswith(("batch_size", "gradient_accumulation")) for d in self.differences)
            if not restore_into(state, self.checkpoint, keep_batch=not batch_changed, check_plan=not self.force):
                log.warning("resume_optimizer_restarted", step=state.step, reason="the checkpoint's optimizer "
                            "state does not fit this strategy, world size or ZeRO stage; weights, schedule, "
                            "data and RNG are restored")
            self._last_saved = state.step

        return LoopHooks(restore=restore if self.checkpoint is not None else None, after_step=self._after_step,
                         oom=OomRecovery(enabled=training.oom_recovery, log=log))

    def _after_step(self, state: LoopState) -> None:
        save_steps = self.settings.training.save_steps
        if (save_steps and state.step % save_steps == 0) or state.step == state.steps_total:
            self.save_checkpoint(state)
        sharded = state.parallel.sharded
        if self.guard is not None:  # rank 0 alone reads the sensor, so it cannot start a sharded gather
            self.guard.check(state.step, (lambda: None) if sharded else lambda: self.save_checkpoint(state), self._log)
        stop = self._controls.stop
        if stop.requested and state.step < state.steps_total:
            if not sharded:
                self.save_checkpoint(state)
            self._log.warning("run_stopping", step=self.step_offset + state.step, reason=stop.reason)
            raise StopRequested(f"stopped after step {self.step_offset + state.step}: {stop.reason}")

    @property
    def last_checkpoint_step(self) -> int | None:
        """The step of the newest checkpoint this run wrote or resumed from (None before the first)."""
        if self.part is not None:
            return self.part.last_checkpoint_step
        return self.step_offset + self._last_saved if self._last_saved > 0 else None

    def save_checkpoint(self, state: LoopState) -> Path | None:
        """Checkpoint the loop after ``state.step`` (once per step), prune old ones, update the history.

        With sharded weights every rank takes part in gathering them; rank 0 alone writes.
        """
        if self._last_saved == state.step:
            return None
        gathered, staged = None, {}
        staging = self.run_dir / f"{step_dir_name(state.step)}.ranks"
        if isinstance(state.parallel, Parallel) and state.parallel.sharded:
            gathered = state.parallel.gather(state.model, state.optimizer)
            staged = state.parallel.stage_partitions(state.forward_model, staging)
        if not self.main:
            self._last_saved = state.step
            return None
        started = time.perf_counter()
        elapsed = (self.checkpoint.trainer_state.get("elapsed_seconds", 0.0) if self.checkpoint else 0.0) + \
            started - self._started
        path = write_checkpoint(self.run_dir, state, run_id=self.run_id, config=self.config,
                                elapsed_seconds=elapsed, gathered=gathered,
                                staged=staged)
        shutil.rmtree(staging, ignore_errors=True)
        self._last_saved = state.step
        prune_checkpoints(self.run_dir, self.settings.training.keep_checkpoints)
        self.store.progress(self.run_id, completed_steps=self.step_offset + state.step,
                            loss_history=self.history_prefix + state.result.loss_history,
                            checkpoints=[str(c.path) for c in list_checkpoints(self.run_dir)])
        self._log.info("checkpoint_saved", step=self.step_offset + state.step, path=str(path),
                       seconds=round(time.perf_counter() - started, 3))
        self._callback.fire("on_save", str(path))
        return path

    def record_progress(self, step: int, loss: float) -> None:
        """How far the run is, in the history between checkpoints (``list-runs`` shows a running run's steps)."""
        if self.main:
            self.store.steps_done(self.run_id, completed_steps=step, last_loss=loss)
            self._live_steps = True

    @property
    def owns_output(self) -> bool:
        """Whether this run holds the output folder's lock, and so saves to its fixed ``lora``/``model`` name."""
        return self.lock is None or self.lock.owned

    # ---- the end ---------------------------------------------------------------------------
    def complete(self, run: Any) -> None:
        if not self.main:
            return
        self.store.finish(self.run_id, "completed", completed_steps=run.steps, loss_history=run.loss_history,
                          output_path=run.output_path)
        if self.owns_output:  # earlier runs no longer claim the adapter this one replaced
            self.store.mark_replaced(run.output_path, by=self.run_id)
        self.release()
        seconds = run.duration_seconds
        self.store.set_details(self.run_id, {
            "tokens_trained": run.tokens_trained, "samples_seen": run.samples_seen, "duration_seconds": seconds,
            "tokens_per_second": run.tokens_trained / seconds if seconds > 0 else None,
            **({"sample_answers": run.sample_answers} if getattr(run, "sample_answers", None) else {}),
            **_eval_details(run)})

    def fail(self, exc: BaseException, log: Any = None) -> None:
        """Close the history row of a run that stopped early; never masks the original error."""
        self.release()
        if not self.begun or not self.main:
            return
        status = "failed" if isinstance(exc, Exception) else "interrupted"
        code = getattr(exc, "code", None) or ("RUNTIME_TRAINING_FAILED" if status == "failed" else None)
        kept = (self.last_checkpoint_step or 0) if self._live_steps else None  # what a resume starts from
        try:
            self.store.finish(self.run_id, status, error_code=code, completed_steps=kept,
                              error_message=redact(str(exc))[:500] or type(exc).__name__)
        except Exception as err:  # noqa: BLE001 - e.g. the disk that failed the run fails this write too
            if log is not None:
                log.warning("history_not_updated", error=getattr(err, "code", type(err).__name__))

    def release(self) -> None:
        """Give the output folder back to the next run."""
        if self.lock is not None:
            self.lock.release()


def _eval_details(run: Any) -> dict[str, Any]:
    """The held-out evaluation as the history keeps it (``show-run``, ``diff-runs``, ``export-runs``)."""
    if not getattr(run, "eval_history", None):
        return {}
    return {"eval_history": [list(h) for h in run.eval_history], "best_eval_loss": run.best_eval_loss,
            "best_step": run.best_step, "stop_reason": run.stop_reason,
            "final_adapter_path": run.final_adapter_path, "best_adapter_path": run.best_adapter_path}


def _data_path(data: Any) -> str | None:
    """How the history remembers the data: an absolute path, a hub name, or None for in-memory data.

    Redacted: a token in the path never reaches runs.db, checkpoints or model cards.
    """
    if isinstance(data, str | Path):
        path = Path(data).expanduser()
        return redact(str(path.resolve()) if path.exists() else str(data))
    return None
