"""``Trainer.multi_run``: several LoRA runs on new data, merged with SLAO, with a forgetting report.

Read top to bottom: check the arguments -> cut the data into one slice per run (train + held-out) ->
find a campaign to continue -> load the model once -> for each run: initialise (A, B) the SLAO way,
train with a fresh optimizer as an ordinary run segment (``training.run.run_segment``: step checkpoints
in ``checkpoints/<id>/run-NNNN``, guards, stop), merge, score the merged adapter on every held-out slice
so far, save the run's own adapter and a campaign checkpoint -> save the merged adapter as a normal PEFT
folder and the forgetting report. ``merge_mode="none"`` is plain sequential LoRA, for comparison. The
campaign gets what it needs from its Trainer as a :class:`CampaignTools`, never the Trainer itself.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings
from ..data import load_examples, tokenize_examples
from ..errors import BackpropagateError, check_count, invalid_value
from ..logs import bound_run, get_logger, redact
from ..storage.store import RunStore
from ..training.callbacks import TrainingCallback, TrainingRun
from ..training.output_lock import run_folder_name
from ..training.parallel import world_from_env
from ..training.resume import run_config
from ..training.run import loop_config, run_failures, run_segment
from ..training.session import RunSession
from ..training.stop import RunControls
from ..training.tracking import TrackerHub
from .campaign_resume import find_campaign, resumed_arguments, stored_data
from .campaign_state import (
    CampaignState,
    RunSlice,
    check_fraction,
    cut_slices,
    newest_good_state,
    schedule_label,
    write_state,
)
from .forgetting import ForgettingReport, evaluate
from .peft_bridge import lora_pairs, set_lora_pairs
from .slao import SlaoState, merge_run, merge_weight, next_init

MERGE_MODES = ("slao", "none")
EXPERIMENTAL_NOTE = "experimental: {what} is not covered by the SLAO paper; the merge may not behave as published"


@dataclass
class CampaignTools:
    """What a campaign needs from its Trainer: settings, where to write, and how to decide, load and save."""
    settings: Settings
    output_dir: Path
    defaults: Callable[[], Any]  # the smart defaults (a RunDefaults), decided once the arguments are checked
    load: Callable[[Any], Any]  # defaults -> the loaded model (a training.loader.LoadedModel)
    save: Callable[[Path], Path]  # writes the live adapter to a folder
    controls: RunControls = field(default_factory=RunControls)


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
    run: TrainingRun | None = None  # the campaign as one TrainingRun (what export's model card reads)

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


def _campaign_config(settings: Settings, slices: Sequence[RunSlice], loaded: Sequence[Any], names: Sequence[str],
                     steps_per_run: int, samples_per_run: int | None, merge_mode: str, eval_fraction: float,
                     schedule: Any, experimental: bool, format: str | None, text_column: str | None) -> dict:
    fingerprints = [d.fingerprint for d in loaded]
    config = run_config(settings, steps=steps_per_run * len(slices), data_path=names[0],
                        fingerprint="+".join(fingerprints), format=format, text_column=text_column)
    config["multi_run"] = {"num_runs": len(slices), "steps_per_run": steps_per_run,
                           "samples_per_run": samples_per_run, "merge_mode": merge_mode,
                           "eval_fraction": eval_fraction, "lambda_schedule": schedule_label(schedule),
                           "experimental": experimental, "datasets": list(names), "fingerprints": fingerprints,
                           "formats": [s.format for s in slices]}
    return config


def _checked(tools: CampaignTools, dataset: Any, resume: Any, given: dict[str, Any]) -> tuple[dict, list, list]:
    """The campaign's arguments (a resumed campaign's own where None), checked before anything loads; its
    data sources; and the notes its report will carry."""

    if world_from_env()[1] > 1:
        raise BackpropagateError("INPUT_INVALID_VALUE", "multi-run campaigns run in one process; this one was "
                                 "started on several (torchrun / accelerate launch / srun).",
                                 hint="Start `backprop multi-run` without a multi-process launcher.")
    args = resumed_arguments(tools.output_dir, resume, given)
    args["experimental"] = bool(args["experimental"])
    notes = _check_arguments(tools.settings, args["num_runs"], args["steps_per_run"], args["merge_mode"],
                             args["lambda_schedule"], args["experimental"])
    args["eval_fraction"] = check_fraction(args["eval_fraction"])
    samples = args["samples_per_run"]
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 2):
        raise invalid_value("samples_per_run", samples, "an integer >= 2")
    if dataset is None and resume not in (None, False, True):
        dataset = stored_data(tools.output_dir, resume)
    if dataset is None:
        raise invalid_value("dataset", None, "a dataset, or a list of datasets (one per run)")
    sources = list(dataset) if isinstance(dataset, list | tuple) else [dataset]
    if len(sources) > 1 and args["num_runs"] is not None and args["num_runs"] != len(sources):
        raise invalid_value("num_runs", args["num_runs"], f"{len(sources)}: one run per dataset given")
    args["num_runs"] = len(sources) if len(sources) > 1 else (args["num_runs"] or 5)
    return args, sources, notes


def run_campaign(tools: CampaignTools, dataset: Any = None, *, num_runs: int | None = None,
                 steps_per_run: int | None = None, samples_per_run: int | None = None, merge_mode: str | None = None,
                 eval_fraction: float | None = None, lambda_schedule: Any = None, experimental: bool | None = None,
                 resume: str | bool | None = None, force: bool = False, format: str | None = None,
                 text_column: str | None = None, callback: TrainingCallback | None = None) -> MultiRunResult:
    """The body of :meth:`backpropagate.Trainer.multi_run` (see there for the arguments)."""
    log = get_logger()
    args, sources, notes = _checked(tools, dataset, resume, {
        "num_runs": num_runs, "steps_per_run": steps_per_run, "samples_per_run": samples_per_run,
        "merge_mode": merge_mode, "eval_fraction": eval_fraction, "lambda_schedule": lambda_schedule,
        "experimental": experimental})
    defaults = tools.defaults()
    loaded = [load_examples(s, require_assistant=defaults.train_on_responses, format=format,
                            text_column=text_column) for s in sources]
    names = [_name(s) for s in sources]
    slices = cut_slices(loaded, names, num_runs=args["num_runs"], samples_per_run=args["samples_per_run"],
                        eval_fraction=args["eval_fraction"], seed=tools.settings.training.seed)
    if len({s.format for s in slices}) > 1:
        notes.append("the runs' datasets have different formats: " + ", ".join(s.format for s in slices))
    if any(s.duplicates for s in slices):
        notes.append("rows whose text occurs more than once in the campaign's data are never held out: "
                     + ", ".join(f"run {i}: {s.duplicates}" for i, s in enumerate(slices, start=1) if s.duplicates))
    config = _campaign_config(tools.settings, slices, loaded, names, args["steps_per_run"], args["samples_per_run"],
                              args["merge_mode"], args["eval_fraction"], args["lambda_schedule"],
                              args["experimental"], format, text_column)
    store = RunStore.for_output(tools.output_dir)
    store.check()
    record = find_campaign(store, resume, config, force, log)
    session = RunSession(store, record.run_id if record is not None else uuid.uuid4().hex, record,
                         data=names[0], steps=config["steps"], format=format, text_column=text_column)
    session.settings, session.config, session.force = tools.settings, config, force
    with bound_run(session.run_id):
        campaign = Campaign(tools, session, slices, args["merge_mode"], args["steps_per_run"],
                             args["lambda_schedule"], notes, callback or TrainingCallback(), log)
        return campaign.run(defaults)


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


class Campaign:
    """One campaign's loop; holds what every run needs so each step below reads as one line."""

    def __init__(self, tools: CampaignTools, session: Any, slices: list[RunSlice], merge_mode: str,
                 steps_per_run: int, schedule: Any, notes: list[str], callback: TrainingCallback, log: Any) -> None:
        self.tools, self.session, self.slices, self.config = tools, session, slices, session.config
        self.run_id, self.controls = session.run_id, tools.controls
        self.merge_mode, self.steps_per_run, self.schedule, self.notes = merge_mode, steps_per_run, schedule, notes
        self.callback, self.log = callback, log
        self.run_dir = session.run_dir  # <output>/checkpoints/<run_id>: campaign checkpoints, run-NNNN step ones
        self.adapters_dir = tools.output_dir / "multi_run" / self.run_id
        self.trackers: Any = None

    def run(self, defaults: Any) -> MultiRunResult:
        started, log = time.perf_counter(), self.log
        log.info("multi_run_started", run_id=self.run_id, runs=len(self.slices), merge_mode=self.merge_mode,
                 steps_per_run=self.steps_per_run, resume=self.session.resuming)
        log.info("smart_defaults\n" + defaults.table())
        self.loaded = self.tools.load(defaults)
        tok, responses = self.loaded.tokenizer, defaults.train_on_responses
        tokenized = [(tokenize_examples(tok, s.train, train_on_responses=responses),
                      tokenize_examples(tok, s.holdout, train_on_responses=responses)) for s in self.slices]
        with run_failures(self.session, self.callback, log, what="multi-run", on_failure=self._close_trackers):
            state = self._start_state()
            self.trackers = TrackerHub.open(self.tools.settings.training.report_to, run_id=self.run_id,
                                            output_dir=self.tools.output_dir, config=self.config, log=log)
            self.callback = self.trackers.callback(self.callback)  # sees the campaign-wide step numbers
            for i in range(state.runs_done + 1, len(self.slices) + 1):
                state = self.train_run(i, state, tokenized, defaults)
                self.session.store.progress(self.run_id, completed_steps=i * self.steps_per_run,
                                            loss_history=_flat(state.loss_histories), checkpoints=[str(self.run_dir)])
                self.session.store.set_details(self.run_id, self._details(state))
            result = self._finish(state, started)
        self._complete(state, result)
        return result

    def _close_trackers(self) -> None:
        if self.trackers is not None:
            self.trackers.finish()

    # ---- state ------------------------------------------------------------------------------------
    def _start_state(self) -> CampaignState:
        session = self.session
        state = newest_good_state(self.run_dir, self.schedule, self.log) if session.resuming else None
        done = state.runs_done if state else 0
        session.begin(model_name=self.tools.settings.model.name,
                      progress=(done * self.steps_per_run, _flat(state.loss_histories) if state else []))
        if session.resuming:
            self.log.info("resuming", from_run=done + 1, runs=len(self.slices))
        if not session.owns_output:
            self.log.warning("output_in_use", saving_to=str(self._merged_dir()),
                             reason="another run holds the output folder")
        if state is None:  # run 0: the adapter as peft initialised it, so a resume starts run 1 the same way
            report = ForgettingReport(tasks=[s.name for s in self.slices], merge_mode=self.merge_mode,
                                      notes=self.notes)
            initial = lora_pairs(self.loaded.model)
            state = CampaignState(slao=SlaoState(last_finetuned=initial, schedule=self.schedule), report=report)
            write_state(self.run_dir, state)
        return state

    def _init_pairs(self, state: CampaignState) -> dict:
        if state.runs_done == 0 or self.merge_mode == "none":
            return {n: (a.clone(), b.clone()) for n, (a, b) in state.slao.last_finetuned.items()}
        return next_init(state.slao)

    # ---- one run ----------------------------------------------------------------------------------
    def train_run(self, i: int, state: CampaignState, tokenized: list, defaults: Any) -> CampaignState:
        """Run i as an ordinary run segment (its own step checkpoints), then merge, score and checkpoint."""
        log, model, settings = self.log, self.loaded.model, self.tools.settings
        train, _ = tokenized[i - 1]
        log.info("multi_run_run_started", run=i, of=len(self.slices), rows=len(train), data=self.slices[i - 1].name)
        set_lora_pairs(model, self._init_pairs(state))
        part = self.session.segment(self.run_dir / f"run-{i:04d}", steps=self.steps_per_run,
                                    step_offset=(i - 1) * self.steps_per_run,
                                    history_prefix=_flat(state.loss_histories), log=log)
        loop = loop_config(settings, defaults, steps=self.steps_per_run, seed=settings.training.seed + i)
        result = run_segment(part, self.loaded, train, loop, callback=self._offset_callback(i), log=log,
                             controls=self.controls)
        finetuned = lora_pairs(model)
        self.adapters_dir.mkdir(parents=True, exist_ok=True)
        adapter = self.tools.save(self.adapters_dir / f"run-{i}")
        if self.merge_mode == "slao":
            slao, weight = merge_run(state.slao, finetuned), merge_weight(i, self.schedule)
        else:
            slao, weight = SlaoState(runs_merged=i, merged=finetuned, last_finetuned=finetuned,
                                     schedule=self.schedule), 1.0
        set_lora_pairs(model, slao.merged)
        pad = self.loaded.tokenizer.pad_token_id
        scores = [evaluate(model, held, pad, max_seq_length=settings.training.max_seq_length)
                  for _, held in tokenized[:i]]
        report = ForgettingReport(state.report.accuracy, state.report.loss, list(state.report.tasks),
                                  state.report.merge_mode, list(state.report.notes))
        report.add_run([acc for _, acc in scores], [loss for loss, _ in scores])
        new = CampaignState(slao=slao, report=report, loss_histories=[*state.loss_histories, result.loss_history],
                            merge_weights=[*state.merge_weights, weight],
                            run_adapters=[*state.run_adapters, str(adapter)])
        write_state(self.run_dir, new)
        shutil.rmtree(part.run_dir, ignore_errors=True)  # the campaign checkpoint replaces the run's own
        log.info("multi_run_merged", run=i, merge_weight=round(weight, 4), final_loss=round(result.loss_history[-1], 5),
                 accuracy_now=[round(a, 4) for _, a in scores])
        return new

    def _offset_callback(self, i: int) -> TrainingCallback:
        """The user's callback, with steps counted over the whole campaign (for progress bars)."""
        outer, offset, total = self.callback, (i - 1) * self.steps_per_run, len(self.slices) * self.steps_per_run

        def on_log(metrics: dict[str, Any]) -> None:
            outer.fire("on_log", {**metrics, "step": offset + metrics["step"], "steps_total": total, "run": i,
                                  "runs": len(self.slices)})

        return TrainingCallback(on_step=lambda step, loss: outer.fire("on_step", offset + step, loss),
                                on_epoch=outer.on_epoch, on_log=on_log)

    # ---- the end ----------------------------------------------------------------------------------
    def _finish(self, state: CampaignState, started: float) -> MultiRunResult:
        output_dir = self.tools.output_dir
        set_lora_pairs(self.loaded.model, state.slao.merged)
        output = self.tools.save(self._merged_dir())
        result = MultiRunResult(run_id=self.run_id, merge_mode=self.merge_mode, steps_per_run=self.steps_per_run,
                                report=state.report, loss_histories=state.loss_histories,
                                merge_weights=state.merge_weights, run_adapters=state.run_adapters,
                                output_path=str(output), duration_seconds=time.perf_counter() - started,
                                notes=list(self.notes))
        try:
            json_path, png_path = state.report.save(output_dir)
            result.forgetting_json, result.forgetting_png = str(json_path), str(png_path)
        except BackpropagateError as exc:
            if exc.code != "DEP_EXTRA_MISSING":
                raise
            json_path = output_dir / "forgetting.json"
            json_path.write_text(state.report.to_json() + "\n", encoding="utf-8")
            result.forgetting_json = str(json_path)
            result.notes.append("forgetting.png not written: " + exc.message)
        accuracy = (state.report.summary() or {}).get("accuracy", {})  # the table: result.report, the CLI
        self.log.info("forgetting_report", **{k: round(v, 4) for k, v in accuracy.items()},
                      saved=result.forgetting_json)
        self.trackers.log(_forgetting_metrics(state.report), step=len(self.slices) * self.steps_per_run)
        self.trackers.finish()
        result.run = result.training_run(self.config)
        self.callback.fire("on_complete", result.run)
        return result

    def _complete(self, state: CampaignState, result: MultiRunResult) -> None:
        """The history row: completed, the adapter it replaced, the per-run details; the folder is free again."""
        store = self.session.store
        store.finish(self.run_id, "completed", completed_steps=len(self.slices) * self.steps_per_run,
                     loss_history=_flat(result.loss_histories), output_path=result.output_path)
        if self.session.owns_output:
            store.mark_replaced(result.output_path, by=self.run_id)
        store.set_details(self.run_id, self._details(state, result))
        self.session.release()
        self.log.info("multi_run_completed", output=result.output_path, seconds=round(result.duration_seconds, 1),
                      **{k: round(v, 4) for k, v in (result.report.summary() or {}).get("accuracy", {}).items()})

    def _merged_dir(self) -> Path:
        return self.tools.output_dir / run_folder_name("lora", self.run_id, self.session.owns_output)

    def _details(self, state: CampaignState, result: MultiRunResult | None = None) -> dict[str, Any]:
        runs = [{"run": i, "data": s.name, "format": s.format, "train_rows": len(s.train),
                 "holdout_rows": len(s.holdout), "final_loss": h[-1], "merge_weight": w, "adapter": a}
                for i, (s, h, w, a) in enumerate(zip(self.slices, state.loss_histories, state.merge_weights,
                                                     state.run_adapters, strict=False), start=1)]
        details: dict[str, Any] = {"kind": "multi_run", "merge_mode": self.merge_mode, "runs": runs,
                                   "forgetting": state.report.to_dict(), "notes": self.notes}
        if result is not None:
            details["forgetting_json"], details["forgetting_png"] = result.forgetting_json, result.forgetting_png
        return details


def _flat(histories: Sequence[Sequence[float]]) -> list[float]:
    """The campaign's losses as one history (run 1's, then run 2's, ...)."""
    return [loss for history in histories for loss in history]
