"""``Trainer.multi_run``: several LoRA runs on new data, merged with SLAO, with a forgetting report.

Read top to bottom: check the arguments -> cut the data into one slice per run (train + held-out) ->
find a campaign to continue -> load the model once -> for each run: initialise (A, B) the SLAO way,
train with a fresh optimizer, merge, score the merged adapter on every held-out slice so far, save the
run's own adapter and a campaign checkpoint -> save the merged adapter as a normal PEFT folder and the
forgetting report. ``merge_mode="none"`` is plain sequential LoRA, for comparison.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BackpropagateError, check_count, invalid_value
from ..logs import bound_run, get_logger, is_redacted, redact
from ..training.callbacks import TrainingCallback, TrainingRun
from ..training.output_lock import OutputLock, run_folder_name
from .campaign_state import (
    CampaignState,
    RunSlice,
    check_fraction,
    cut_slices,
    newest_good_state,
    schedule_label,
    write_state,
)
from .forgetting import ForgettingReport
from .slao import SlaoState, merge_run, merge_weight, next_init

MERGE_MODES = ("slao", "none")
EXPERIMENTAL_NOTE = "experimental: {what} is not covered by the SLAO paper; the merge may not behave as published"


@dataclass
class MultiRunResult:
    """What ``Trainer.multi_run`` returns; ``output_path`` holds the merged adapter (a PEFT folder)."""

    run_id: str
    merge_mode: str
    steps_per_run: int
    report: ForgettingReport
    loss_histories: list[list[float]]
    merge_weights: list[float]
    run_adapters: list[str]
    output_path: str
    duration_seconds: float
    forgetting_json: str | None = None
    forgetting_png: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def num_runs(self) -> int:
        return len(self.loss_histories)

    @property
    def final_loss(self) -> float:
        return self.loss_histories[-1][-1]

    def training_run(self, config: dict[str, Any]) -> TrainingRun:
        """The campaign as one TrainingRun (what export's model card and the history read)."""
        history = [loss for run in self.loss_histories for loss in run]
        return TrainingRun(run_id=self.run_id, steps=len(history), final_loss=self.final_loss,
                           loss_history=history, output_path=self.output_path,
                           duration_seconds=self.duration_seconds, samples_seen=0, config=config)


def _check_arguments(settings: Any, num_runs: Any, steps_per_run: Any, merge_mode: str, schedule: Any,
                     experimental: bool) -> list[str]:
    check_count("num_runs", num_runs)
    check_count("steps_per_run", steps_per_run)
    if merge_mode not in MERGE_MODES:
        raise invalid_value("merge_mode", merge_mode, "one of " + ", ".join(MERGE_MODES))
    merge_weight(1, schedule)  # an unknown schedule fails now, not after run 1
    if settings.training.mode == "full":
        raise BackpropagateError("SLAO_UNSUPPORTED_METHOD", "multi-run merges LoRA adapters; mode='full' has none.")
    unusual = [what for what, used in (("DoRA", settings.lora.use_dora),
                                       (f"init_lora_weights={settings.lora.init_weights!r}",
                                        settings.lora.init_weights != "default")) if used]
    if unusual and not experimental:
        raise BackpropagateError("SLAO_UNSUPPORTED_METHOD", f"{' and '.join(unusual)} is not covered by the SLAO "
                                 "paper, so its merge is unproven.")
    return [EXPERIMENTAL_NOTE.format(what=what) for what in unusual]


def _campaign_config(trainer: Any, slices: Sequence[RunSlice], loaded: Sequence[Any], names: Sequence[str],
                     steps_per_run: int, samples_per_run: int | None, merge_mode: str, eval_fraction: float,
                     schedule: Any, experimental: bool, format: str | None, text_column: str | None) -> dict:
    from ..training.resume import run_config

    fingerprints = [d.fingerprint for d in loaded]
    config = run_config(trainer.settings, steps=steps_per_run * len(slices), data_path=names[0],
                        fingerprint="+".join(fingerprints), format=format, text_column=text_column)
    config["multi_run"] = {"num_runs": len(slices), "steps_per_run": steps_per_run,
                           "samples_per_run": samples_per_run, "merge_mode": merge_mode,
                           "eval_fraction": eval_fraction, "lambda_schedule": schedule_label(schedule),
                           "experimental": experimental, "datasets": list(names), "fingerprints": fingerprints,
                           "formats": [s.format for s in slices]}
    return config


def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    from ..training.resume import config_differences

    diffs = config_differences(stored, current)
    old, new = stored.get("multi_run", {}), current.get("multi_run", {})
    diffs += [f"{key} ({old.get(key)!r} -> {new.get(key)!r})" for key in
              ("num_runs", "steps_per_run", "samples_per_run", "merge_mode", "eval_fraction", "lambda_schedule")
              if old.get(key) != new.get(key)]
    return diffs


def _find_campaign(store: Any, resume: str | bool | None, config: dict[str, Any], force: bool, log: Any) -> Any:
    """The history row to continue: the one named, else an unfinished one with this very configuration."""
    from ..training.resume import RESUMABLE, pick_run

    if resume not in (None, False, True):
        record = pick_run(store, resume)
        if "multi_run" not in record.config:
            raise BackpropagateError("INPUT_INVALID_VALUE", f"run {record.run_id[:8]} is a single run, not a "
                                     "multi-run campaign.", hint=f"Use `backprop resume {record.run_id[:8]}`.")
    else:
        record = next((r for r in store.list() if r.status in RESUMABLE and "multi_run" in r.config
                       and not _differences(r.config, config)), None)
        if record is not None:
            log.info("campaign_continued", run_id=record.run_id, reason="an unfinished campaign with the same "
                     "data and settings is in this output directory")
        return record
    diffs = _differences(record.config, config)
    if diffs and not force:
        raise BackpropagateError("INPUT_RESUME_MISMATCH", f"campaign {record.run_id[:8]} was started with other "
                                 f"data or settings: {'; '.join(diffs)}.")
    if diffs:
        log.warning("resume_forced", differences=diffs)
    return record


def _stored_data(trainer: Any, resume: Any) -> list[str]:
    """The datasets of the campaign being resumed, when the caller did not pass them again."""
    from ..runs.store import RunStore

    record = RunStore.for_output(trainer.output_dir).get(str(resume))
    datasets = record.config.get("multi_run", {}).get("datasets")
    if not datasets:
        raise invalid_value("dataset", None, "the datasets of the campaign (none are recorded)")
    if any(is_redacted(name) for name in datasets):
        raise BackpropagateError("INPUT_RECORDED_PATH_REDACTED", f"a dataset path of campaign {record.run_id[:8]} "
                                 "held a credential; its history keeps only the redacted form.",
                                 hint=f"Pass the datasets again: `backprop resume {record.run_id[:8]} --data <file>` "
                                      "(or dataset=... to multi_run).")
    return list(datasets)


DEFAULTS = {"num_runs": None, "steps_per_run": 100, "samples_per_run": None, "merge_mode": "slao",
            "eval_fraction": 0.1, "lambda_schedule": "1/sqrt(i)", "experimental": False}


def _resumed_arguments(trainer: Any, resume: Any, given: dict[str, Any]) -> dict[str, Any]:
    """Arguments left as None: the campaign's own when resuming one by id, else the defaults."""
    stored: dict[str, Any] = {}
    if resume not in (None, False, True):
        from ..runs.store import RunStore

        stored = RunStore.for_output(trainer.output_dir).get(str(resume)).config.get("multi_run", {})
    out = {}
    for key, default in DEFAULTS.items():
        value = given[key]
        if value is None:
            value = stored.get(key, default)
            if isinstance(value, str) and value.startswith("callable:"):
                raise invalid_value("lambda_schedule", None, "the same function the campaign was started with")
        out[key] = value
    return out


def run_campaign(trainer: Any, dataset: Any = None, *, num_runs: int | None = None, steps_per_run: int | None = None,
                 samples_per_run: int | None = None, merge_mode: str | None = None, eval_fraction: float | None = None,
                 lambda_schedule: Any = None, experimental: bool | None = None, resume: str | bool | None = None,
                 force: bool = False, format: str | None = None, text_column: str | None = None,
                 callback: TrainingCallback | None = None, fault_hook: Any = None) -> MultiRunResult:
    """The body of :meth:`backpropagate.Trainer.multi_run` (see there for the arguments)."""
    from ..data import load_examples
    from ..runs.store import RunStore
    from ..training.parallel import world_from_env

    log = get_logger()
    if world_from_env()[1] > 1:
        raise BackpropagateError("INPUT_INVALID_VALUE", "multi-run campaigns run in one process; this one was "
                                 "started on several (torchrun / accelerate launch / srun).",
                                 hint="Start `backprop multi-run` without a multi-process launcher.")
    args = _resumed_arguments(trainer, resume, {
        "num_runs": num_runs, "steps_per_run": steps_per_run, "samples_per_run": samples_per_run,
        "merge_mode": merge_mode, "eval_fraction": eval_fraction, "lambda_schedule": lambda_schedule,
        "experimental": experimental})
    num_runs, steps_per_run, samples_per_run = args["num_runs"], args["steps_per_run"], args["samples_per_run"]
    merge_mode, eval_fraction, lambda_schedule = args["merge_mode"], args["eval_fraction"], args["lambda_schedule"]
    experimental = bool(args["experimental"])
    notes = _check_arguments(trainer.settings, num_runs, steps_per_run, merge_mode, lambda_schedule, experimental)
    eval_fraction = check_fraction(eval_fraction)
    if samples_per_run is not None and (isinstance(samples_per_run, bool) or not isinstance(samples_per_run, int)
                                        or samples_per_run < 2):
        raise invalid_value("samples_per_run", samples_per_run, "an integer >= 2")
    if dataset is None and resume not in (None, False, True):
        dataset = _stored_data(trainer, resume)
    if dataset is None:
        raise invalid_value("dataset", None, "a dataset, or a list of datasets (one per run)")
    sources = list(dataset) if isinstance(dataset, list | tuple) else [dataset]
    if len(sources) > 1 and num_runs is not None and num_runs != len(sources):
        raise invalid_value("num_runs", num_runs, f"{len(sources)}: one run per dataset given")
    num_runs = len(sources) if len(sources) > 1 else (num_runs or 5)
    defaults = trainer.smart_defaults()
    loaded = [load_examples(s, require_assistant=defaults.train_on_responses, format=format,
                            text_column=text_column) for s in sources]
    names = [_name(s) for s in sources]
    slices = cut_slices(loaded, names, num_runs=num_runs, samples_per_run=samples_per_run,
                        eval_fraction=eval_fraction, seed=trainer.settings.training.seed)
    if len({s.format for s in slices}) > 1:
        notes.append("the runs' datasets have different formats: " + ", ".join(s.format for s in slices))
    config = _campaign_config(trainer, slices, loaded, names, steps_per_run, samples_per_run, merge_mode,
                              eval_fraction, lambda_schedule, experimental, format, text_column)
    store = RunStore.for_output(trainer.output_dir)
    store.check()
    record = _find_campaign(store, resume, config, force, log)
    run_id = record.run_id if record is not None else uuid.uuid4().hex
    with bound_run(run_id), OutputLock.acquire(trainer.output_dir) as lock:  # as a single run: see output_lock
        campaign = _Campaign(trainer, run_id, slices, config, merge_mode, steps_per_run, lambda_schedule, notes,
                             callback or TrainingCallback(), fault_hook, log)
        campaign.owns_output = lock.owned
        return campaign.run(store, record, defaults)


def _forgetting_metrics(report: ForgettingReport) -> dict[str, float]:
    """The matrix and its summary as flat tracker metrics."""
    metrics = {f"forgetting/{k}": v for k, v in (report.summary() or {}).get("accuracy", {}).items()}
    for i, row in enumerate(report.accuracy, start=1):
        for j, value in enumerate(row, start=1):
            metrics[f"forgetting/acc_after_{i}_task_{j}"] = value
            metrics[f"forgetting/loss_after_{i}_task_{j}"] = report.loss[i - 1][j - 1]
    return metrics


def _name(source: Any) -> str:
    """How the history, the report and the logs name a dataset: redacted, like a single run's path."""
    if isinstance(source, str | Path):
        path = Path(source).expanduser()
        return redact(str(path.resolve()) if path.exists() else str(source))
    return f"<{type(source).__name__}>"


class _Campaign:
    """One campaign's loop; holds what every run needs so each step below reads as one line."""

    owns_output = True  # False while another run holds the output folder: the merged adapter goes to lora-<id8>

    def __init__(self, trainer: Any, run_id: str, slices: list[RunSlice], config: dict[str, Any], merge_mode: str,
                 steps_per_run: int, schedule: Any, notes: list[str], callback: TrainingCallback,
                 fault_hook: Any, log: Any) -> None:
        self.trainer, self.run_id, self.slices, self.config = trainer, run_id, slices, config
        self.merge_mode, self.steps_per_run, self.schedule, self.notes = merge_mode, steps_per_run, schedule, notes
        self.callback, self.fault_hook, self.log = callback, fault_hook, log
        output = trainer.output_dir
        self.run_dir = output / "checkpoints" / run_id
        self.adapters_dir = output / "multi_run" / run_id

    def run(self, store: Any, record: Any, defaults: Any) -> MultiRunResult:
        from ..data import tokenize_examples

        started = time.perf_counter()
        trainer, log = self.trainer, self.log
        log.info("multi_run_started", run_id=self.run_id, runs=len(self.slices), merge_mode=self.merge_mode,
                 steps_per_run=self.steps_per_run, resume=record is not None)
        if not self.owns_output:
            log.warning("output_in_use", saving_to=str(self._merged_dir()), reason="another run holds the output folder")
        log.info("smart_defaults\n" + defaults.table())
        trainer._load(defaults)
        tok = trainer.tokenizer
        tokenized = [(tokenize_examples(tok, s.train, train_on_responses=defaults.train_on_responses),
                      tokenize_examples(tok, s.holdout, train_on_responses=defaults.train_on_responses))
                     for s in self.slices]
        state = self._start_state(store, record)
        from ..training.tracking import TrackerHub

        self.trackers = TrackerHub.open(trainer.settings.training.report_to, run_id=self.run_id,
                                        output_dir=trainer.output_dir, config=self.config, log=log)
        self.callback = self.trackers.callback(self.callback)  # sees the campaign-wide step numbers
        try:
            for i in range(state.runs_done + 1, len(self.slices) + 1):
                state = self._one_run(i, state, tokenized, defaults)
                store.progress(self.run_id, completed_steps=i * self.steps_per_run,
                               loss_history=[x for h in state.loss_histories for x in h],
                               checkpoints=[str(self.run_dir)])
                store.set_details(self.run_id, self._details(state))
            result = self._finish(state, started)
        except BaseException as exc:
            self.trackers.finish()
            self._fail(store, exc)
            if isinstance(exc, BackpropagateError) or not isinstance(exc, Exception):
                raise
            raise BackpropagateError("RUNTIME_TRAINING_FAILED",
                                     f"multi-run failed: {type(exc).__name__}: {redact(str(exc))[:300]}") from exc
        store.finish(self.run_id, "completed", completed_steps=len(self.slices) * self.steps_per_run,
                     loss_history=trainer.last_run.loss_history, output_path=result.output_path)
        if self.owns_output:
            store.mark_replaced(result.output_path, by=self.run_id)
        store.set_details(self.run_id, self._details(state, result))
        log.info("multi_run_completed", output=result.output_path, seconds=round(result.duration_seconds, 1),
                 **{k: round(v, 4) for k, v in (result.report.summary() or {}).get("accuracy", {}).items()})
        return result

    # ---- state ------------------------------------------------------------------------------------
    def _start_state(self, store: Any, record: Any) -> CampaignState:
        from .peft_bridge import lora_pairs

        model_name = self.trainer.settings.model.name
        state = newest_good_state(self.run_dir, self.schedule, self.log) if record is not None else None
        if record is None:
            store.start(run_id=self.run_id, model=redact(model_name), dataset_path=self.config["dataset"]["path"],
                        dataset_hash=self.config["dataset"]["fingerprint"], config=self.config,
                        steps=self.config["steps"])
        else:
            done = state.runs_done if state else 0
            store.resume(self.run_id, config=self.config, dataset_hash=self.config["dataset"]["fingerprint"],
                         steps=self.config["steps"], completed_steps=done * self.steps_per_run,
                         loss_history=[x for h in state.loss_histories for x in h] if state else [])
            self.log.info("resuming", from_run=done + 1, runs=len(self.slices))
        if state is None:  # run 0: the adapter as peft initialised it, so a resume starts run 1 the same way
            report = ForgettingReport(tasks=[s.name for s in self.slices], merge_mode=self.merge_mode,
                                      notes=self.notes)
            initial = lora_pairs(self.trainer.model)
            state = CampaignState(slao=SlaoState(last_finetuned=initial, schedule=self.schedule), report=report)
            write_state(self.run_dir, state)
        return state

    def _init_pairs(self, state: CampaignState) -> dict:
        if state.runs_done == 0 or self.merge_mode == "none":
            return {n: (a.clone(), b.clone()) for n, (a, b) in state.slao.last_finetuned.items()}
        return next_init(state.slao)

    # ---- one run ----------------------------------------------------------------------------------
    def _one_run(self, i: int, state: CampaignState, tokenized: list, defaults: Any) -> CampaignState:
        from ..training.engine import LoopHooks, train_loop
        from ..training.guards import OomRecovery, ThermalGuard
        from .forgetting import evaluate
        from .peft_bridge import lora_pairs, set_lora_pairs

        trainer, log = self.trainer, self.log
        model, settings = trainer.model, trainer.settings
        train, _ = tokenized[i - 1]
        log.info("multi_run_run_started", run=i, of=len(self.slices), rows=len(train), data=self.slices[i - 1].name)
        if self.fault_hook is not None:
            self.fault_hook("run_start", i, None)
        set_lora_pairs(model, self._init_pairs(state))
        guard = ThermalGuard.from_settings(settings.training, next(model.parameters()).device)
        hooks = LoopHooks(fault=self.fault_hook, oom=OomRecovery(enabled=settings.training.oom_recovery, log=log),
                          after_step=lambda s: guard.check(s.step, lambda: None, log))
        loop = trainer._loop_config(defaults, steps=self.steps_per_run, seed=settings.training.seed + i)
        result = train_loop(model, train, loop, pad_token_id=trainer.tokenizer.pad_token_id,
                            callback=self._offset_callback(i), log=log, hooks=hooks)
        finetuned = lora_pairs(model)
        self.adapters_dir.mkdir(parents=True, exist_ok=True)
        adapter = trainer.save(self.adapters_dir / f"run-{i}")
        if self.merge_mode == "slao":
            slao, weight = merge_run(state.slao, finetuned), merge_weight(i, self.schedule)
        else:
            slao, weight = SlaoState(runs_merged=i, merged=finetuned, last_finetuned=finetuned,
                                     schedule=self.schedule), 1.0
        set_lora_pairs(model, slao.merged)
        scores = [evaluate(model, held, trainer.tokenizer.pad_token_id,
                           max_seq_length=settings.training.max_seq_length) for _, held in tokenized[:i]]
        report = ForgettingReport(state.report.accuracy, state.report.loss, list(state.report.tasks),
                                  state.report.merge_mode, list(state.report.notes))
        report.add_run([acc for _, acc in scores], [loss for loss, _ in scores])
        new = CampaignState(slao=slao, report=report, loss_histories=[*state.loss_histories, result.loss_history],
                            merge_weights=[*state.merge_weights, weight],
                            run_adapters=[*state.run_adapters, str(adapter)])
        write_state(self.run_dir, new)
        log.info("multi_run_merged", run=i, merge_weight=round(weight, 4), final_loss=round(result.loss_history[-1], 5),
                 accuracy_now=[round(a, 4) for _, a in scores])
        return new

    def _offset_callback(self, i: int) -> TrainingCallback:
        """The user's callback, with steps counted over the whole campaign (for progress bars)."""
        outer, offset, total = self.callback, (i - 1) * self.steps_per_run, len(self.slices) * self.steps_per_run

        def on_log(metrics: dict[str, Any]) -> None:
            outer.fire("on_log", {**metrics, "step": offset + metrics["step"], "steps_total": total, "run": i})

        return TrainingCallback(on_step=lambda step, loss: outer.fire("on_step", offset + step, loss),
                                on_epoch=outer.on_epoch, on_log=on_log)

    # ---- the end ----------------------------------------------------------------------------------
    def _finish(self, state: CampaignState, started: float) -> MultiRunResult:
        from .peft_bridge import set_lora_pairs

        trainer = self.trainer
        set_lora_pairs(trainer.model, state.slao.merged)
        output = trainer.save(self._merged_dir())
        result = MultiRunResult(run_id=self.run_id, merge_mode=self.merge_mode, steps_per_run=self.steps_per_run,
                                report=state.report, loss_histories=state.loss_histories,
                                merge_weights=state.merge_weights, run_adapters=state.run_adapters,
                                output_path=str(output), duration_seconds=time.perf_counter() - started,
                                notes=list(self.notes))
        try:
            json_path, png_path = state.report.save(trainer.output_dir)
            result.forgetting_json, result.forgetting_png = str(json_path), str(png_path)
        except BackpropagateError as exc:
            if exc.code != "DEP_EXTRA_MISSING":
                raise
            json_path = trainer.output_dir / "forgetting.json"
            json_path.write_text(state.report.to_json() + "\n", encoding="utf-8")
            result.forgetting_json = str(json_path)
            result.notes.append("forgetting.png not written: " + exc.message)
        self.log.info("forgetting_report\n" + state.report.to_text())
        self.trackers.log(_forgetting_metrics(state.report), step=len(self.slices) * self.steps_per_run)
        self.trackers.finish()
        trainer.last_run = result.training_run(self.config)
        self.callback.fire("on_complete", trainer.last_run)
        return result

    def _merged_dir(self) -> Path:
        return self.trainer.output_dir / run_folder_name("lora", self.run_id, self.owns_output)

    def _details(self, state: CampaignState, result: MultiRunResult | None = None) -> dict[str, Any]:
        runs = [{"run": i, "data": s.name, "format": s.format, "train_rows": len(s.train),
                 "holdout_rows": len(s.holdout), "final_loss": h[-1], "merge_weight": w, "adapter": a}
                for i, (s, h, w, a) in enumerate(zip(self.slices, state.loss_histories, state.merge_weights,
                                                     state.run_adapters, strict=False), start=1)]
        details = {"kind": "multi_run", "merge_mode": self.merge_mode, "runs": runs,
                   "forgetting": state.report.to_dict(), "notes": self.notes}
        if result is not None:
            details["forgetting_json"], details["forgetting_png"] = result.forgetting_json, result.forgetting_png
        return details

    def _fail(self, store: Any, exc: BaseException) -> None:
        status = "failed" if isinstance(exc, Exception) else "interrupted"
        code = getattr(exc, "code", None) or ("RUNTIME_TRAINING_FAILED" if status == "failed" else None)
        try:
            store.finish(self.run_id, status, error_code=code,
                         error_message=redact(str(exc))[:500] or type(exc).__name__)
        except Exception as err:  # noqa: BLE001 - never mask the original error
            self.log.warning("history_not_updated", error=getattr(err, "code", type(err).__name__))
        if isinstance(exc, Exception):
            self.callback.fire("on_error", exc)
