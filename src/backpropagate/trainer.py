"""The ``Trainer`` facade: the 3-line API. It wires config -> data -> model -> loop -> save, nothing more."""

from __future__ import annotations

import inspect
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import check_output_dir, check_output_location
from .chat import adapter_base_name, load_saved, saved_adapter_dir
from .config import TRAINER_ARGS, Settings, resolve_settings
from .continual.campaign import CampaignTools, run_campaign
from .data.preview import RowPreview, preview
from .data.reference import resolve_tokenizer
from .errors import BackpropagateError, check_count
from .export.hub import push_folder
from .export.model_card import write_run_record
from .export.outputs import check_output_path
from .export.pipeline import ExportResult, export_model
from .export.preflight import GgufSupport, gguf_support
from .hardware import HardwareFacts, probe_hardware
from .logs import bound_run, configure, get_logger, is_redacted, redact, redact_tree
from .options import trainer_signature
from .redaction import check_model_id
from .sources import check_sources
from .storage.store import RunStore
from .training.answers import check_sample_prompts, greedy_answer, has_adapter, sample_answers_before
from .training.callbacks import TrainingCallback, TrainingRun
from .training.defaults import decide_defaults, degradation_knobs, degradation_line
from .training.evaluation import EvalRequest, finish
from .training.fit import check_fit, memory_plan
from .training.methods import check_method
from .training.output_lock import LOCK_FILE, run_folder_name
from .training.parallel import Parallel, ProcessStrategy, check_strategy
from .training.progress import RunProgress
from .training.run import (
    announce_rank,
    load_data,
    load_model,
    loop_config,
    open_session,
    run_failures,
    run_segment,
    save_output,
    share_checkpoint,
    training_samples,
)
from .training.stop import RunControls
from .training.tracking import TrackerHub

if TYPE_CHECKING:
    from .training.loader import LoadedModel


class Trainer:
    """Fine-tune a causal LM with LoRA, QLoRA, DoRA or full fine-tuning.

    Every argument left as ``None`` comes from the ``BACKPROPAGATE_*`` environment, then the LoRA
    preset, then the default in :mod:`backpropagate.config` (whose field descriptions document each
    one); machine-dependent values are decided at start by :mod:`backpropagate.training.defaults`.
    """

    def __init__(self, model: str | None = None, **options: Any) -> None:
        """``model`` and any option of the parameter table (``help(Trainer)`` lists them with their types).

        ``model`` may be an adapter folder a run saved: the Trainer then holds that adapter on its base, to
        ``chat`` with (adapter on) or ``export`` (as ``load_adapter`` does), not to train."""
        self._adapter_dir = saved_adapter_dir(model)
        if self._adapter_dir is not None:
            model = adapter_base_name(self._adapter_dir) or model
        self.settings: Settings = resolve_settings(model=model, **options)
        check_method(self.settings)
        check_strategy(self.settings)  # FSDP / DeepSpeed limits, a DeepSpeed config that does not parse
        check_model_id(self.settings.model.name)  # a token in the id is refused, never sent or stored
        self.model: Any = None
        self.tokenizer: Any = None
        self.last_run: TrainingRun | None = None
        self.backend: str | None = None  # "transformers+peft" or "unsloth", once loaded
        self._loaded: LoadedModel | None = None
        self._sharded = False  # after an FSDP / DeepSpeed run this process holds only its share of the weights
        self.controls = RunControls()  # the last run's controls: what stop() signals

    def load_adapter(self, path: str | Path, *, base: str | Path | None = None) -> Trainer:
        """Load an adapter a run saved (``<output_dir>/lora``) on its base; ``chat`` then answers with it on
        and ``export`` exports it. ``base`` replaces the base its adapter_config names. Returns ``self``."""
        saved = load_saved(path, base=base, trust_remote_code=self.settings.model.trust_remote_code)
        self._adapter_dir = saved.source.path
        self.model, self.tokenizer, self.backend = saved.model, saved.tokenizer, "transformers+peft"
        return self

    __init__.__signature__ = trainer_signature()  # type: ignore[attr-defined]  # help(), IDEs: every option

    def stop(self, reason: str = "trainer.stop()") -> None:
        """Stop the running ``train()`` after its current step: it writes a checkpoint, records the run
        ``interrupted`` and raises :class:`~backpropagate.training.stop.RunInterrupted`, whose
        ``resume_command`` finishes it. Safe to call from another thread or a signal handler."""
        self.controls.stop.request(reason)

    @property
    def output_dir(self) -> Path:
        return Path(self.settings.training.output_dir).expanduser()

    @classmethod
    def from_run(cls, run_id: str, output_dir: str | Path | None = None, *, new_output_dir: str | Path | None = None,
                 **overrides: Any) -> Trainer:
        """A Trainer with the settings run ``run_id`` (or a unique prefix of it) was started with.

        Then ``trainer.train(resume=run_id)`` finishes that run. ``overrides`` are Trainer arguments on
        top (e.g. ``save_steps=10``); one that changes the training itself makes the resume refuse unless
        ``force=True``. ``new_output_dir`` trains into another folder (a replay) instead of the run's own.
        """
        output = Path(output_dir) if output_dir is not None else resolve_settings().training.output_dir
        config = RunStore.for_output(output).get(run_id).config
        accepted = inspect.signature(cls.__init__).parameters
        args = {arg: config[group][name] for arg, (group, name) in TRAINER_ARGS.items()
                if arg in accepted and name in config.get(group, {})}
        if "model" not in overrides and is_redacted(args.get("model")):
            raise BackpropagateError("INPUT_RECORDED_PATH_REDACTED", f"run {run_id} was trained on a model whose "
                                     f"name held a credential; its history keeps only {args['model']!r}.",
                                     hint="Pass the model again (--model, or model=... to Trainer.from_run).")
        return cls(**{**args, **overrides, "output_dir": new_output_dir or output})

    def smart_defaults(self, hardware: HardwareFacts | None = None) -> Any:
        """The values this run uses on ``hardware`` (a ``HardwareFacts``; default: this machine), with reasons.

        On a GPU they are fitted to the card by the memory plan (``training.fit``): what changed and why
        is in the table and in ``.changes``.
        """
        return decide_defaults(self.settings, hardware or probe_hardware())

    def plan(self, *, seq_len: int | None = None, batch_size: int | None = None,
             vram_gb: float | None = None) -> Any:
        """Estimate peak memory of a training step before loading any weight (``backpropagate.plan``).

        It is the plan of what the run will use: the smart defaults fitted to the card, with their changes
        listed. ``vram_gb`` plans for a card of that size instead of this machine; ``seq_len`` defaults to
        ``max_seq_length`` and ``batch_size`` to the run's (smart-default) batch size.
        """
        facts = HardwareFacts.gpu(vram_gb, name=f"{vram_gb:g} GB card") if vram_gb else probe_hardware()
        defaults = decide_defaults(self.settings, facts, seq_len=seq_len, batch_size=batch_size)
        plan = memory_plan(self.settings, defaults, seq_len=seq_len)
        return replace(plan, gguf_export=self.gguf_support().line())

    def _log_gguf_support(self, log: Any) -> None:
        """Said at start-up, so a model that cannot become a GGUF is known before hours of training."""
        export = self.gguf_support()
        (log.info if export.supported is not False else log.warning)("gguf_export_check", verdict=export.line())

    def gguf_support(self) -> Any:
        """Whether the model can be exported to GGUF, and why not (``export.preflight``); no weights read."""
        try:
            return gguf_support(self.settings.model.name)
        except ImportError:
            return GgufSupport(None, 'the export extra is not installed: pip install "backpropagate[export]"')

    def load(self, defaults: Any = None) -> LoadedModel:
        """Load the model and tokenizer to train now (``train()`` does it itself), e.g. to inspect or hook the
        model first; once loaded it stays."""

        if self._loaded is None:
            self._loaded = load_model(self.settings, defaults or self.smart_defaults())  # applies fitted values
            self.model, self.tokenizer, self.backend = self._loaded.model, self._loaded.tokenizer, self._loaded.backend
        return self._loaded

    def train(self, data: Any = None, steps: int | None = None, *, eval_data: Any = None,
              eval_fraction: float | None = None, callback: TrainingCallback | None = None,
              format: str | None = None, text_column: str | None = None, curriculum: bool = False,
              resume: str | bool | None = None, force: bool = False, controls: RunControls | None = None,
              sample_prompts: list[str] | None = None) -> TrainingRun:
        """Train for ``steps`` optimizer steps on ``data`` and save the adapter to ``<output_dir>/lora``.

        ``data`` is a file path (JSONL, JSON, CSV, Parquet, TXT), a ``save_to_disk`` folder, a hub
        dataset name or a ``datasets.Dataset``; its format is detected unless ``format`` is given.
        ``curriculum=True`` trains easy to hard without shuffling (see ``data.curriculum.training_order``).
        Checkpoints go to ``<output_dir>/checkpoints/<run_id>/`` and the run to ``<output_dir>/runs.db``.

        ``resume`` continues an interrupted run from its newest good checkpoint, bit for bit: its run id
        (or a unique prefix), or ``True`` for the newest unfinished run in ``output_dir`` (a new run starts
        when there is none). ``data``, ``steps``, ``format``, ``text_column`` and ``curriculum`` then default
        to the run's own; other data or settings are refused (``INPUT_RESUME_MISMATCH``) unless ``force``.
        ``eval_data`` (a dataset like ``data``) or ``eval_fraction`` (a seeded share in (0, 0.5] of the rows
        that occur once in ``data``) is scored every ``eval_steps`` steps and at the end (``run.eval_history``);
        with neither, 5 % of a dataset of 1000+ rows is held out (at most 500), a smaller one is not.
        ``controls`` (a ``RunControls``) carries the stop signal ``stop()`` raises and another temperature
        sensor. ``sample_prompts``: each is answered greedily by the base model before
        the first step and by the tuned model after the last (``run.sample_answers``, ``show-run``).
        """
        self._check_trainable()
        check_count("steps", steps)
        evaluation = EvalRequest.check(eval_data, eval_fraction, self.settings.training, curriculum=curriculum)
        prompts = check_sample_prompts(sample_prompts)
        self._check_sources(data, eval_data, resume=resume)
        check_output_dir(self.output_dir)
        self.controls = controls or self.controls
        self.controls.stop.clear()
        callback = callback or TrainingCallback()
        parallel = Parallel.from_env(self.settings.training)  # under torchrun / accelerate launch / srun
        session = open_session(self.output_dir, parallel, resume=resume, data=data, steps=steps, format=format,
                               text_column=text_column, curriculum=curriculum)
        log = get_logger()
        progress = RunProgress(self.settings.training, log, record=session.record_progress,
                               shown_elsewhere=callback.shows_progress, main=session.main)
        callback = progress.wrap(callback)
        with bound_run(session.run_id), run_failures(session, callback, log), closing(progress):
            announce_rank(parallel, log)
            log.info("run_started", run_id=session.run_id, model=self.settings.model.name, resume=session.resuming)
            run = self._run(session, callback, log, force=force, parallel=parallel, prompts=prompts,
                            evaluation=evaluation)
            log.info("run_completed", steps=run.steps, final_loss=round(run.final_loss, 5),
                     output=run.output_path, seconds=round(run.duration_seconds, 1))
        callback.fire("on_complete", run)
        return run

    def _check_trainable(self) -> None:
        if self._adapter_dir is not None:
            raise BackpropagateError("STATE_ADAPTER_LOADED", f"this Trainer holds the saved adapter "
                                     f"{redact(str(self._adapter_dir))} to chat with or export; it does not "
                                     "train it further.")

    def _check_sources(self, *datasets: Any, resume: Any = None) -> None:
        """The model folder and the data files are checked first: a typo fails in a second, before the
        start-up table, and leaves no run behind. A resume checks the data it is given; its model is the run's
        own, which loads (or fails, coded) after the run is found."""
        check_sources(None if resume else self.settings.model.name, *datasets)

    def _run(self, session: Any, callback: TrainingCallback, log: Any, *, force: bool,
             parallel: ProcessStrategy, prompts: list[str], evaluation: Any) -> TrainingRun:
        """One run, top to bottom: defaults -> data -> resume checks -> model -> loop -> save -> history."""
        started, cfg = time.perf_counter(), self.settings.training
        defaults = self._start_up(log)
        recorded = session.record.config if session.record is not None else {}
        data = evaluation.split(load_data(session, defaults, log), seed=cfg.seed, defaults=defaults, log=log,
                                curriculum=session.curriculum, recorded=recorded.get("evaluation"))  # before loading
        prompts = prompts or list(recorded.get("sample_prompts") or [])  # a resume asks the run's own
        session.prepare(self.settings, data.fingerprint, force=force, log=log,  # resume checks, cheap
                        extra={"evaluation": evaluation.describe(), "sample_prompts": prompts})
        share_checkpoint(session, parallel)
        loaded = self.load(defaults)
        log.info(degradation_line(degradation_knobs(self.settings), loaded.notes), backend=loaded.backend)
        answers = sample_answers_before(loaded.model, loaded.tokenizer, prompts, held_out=evaluation.held_out,
                                        distributed=parallel.distributed, log=log)
        samples = training_samples(loaded.tokenizer, data, defaults, curriculum=session.curriculum,
                                   source=session.data, log=log)
        evaluator = evaluation.evaluator(loaded, defaults, cfg, session, log, distributed=parallel.distributed)
        if evaluator is not None:
            evaluator.answers = answers  # its answers at each evaluation are checkpointed with the eval state
        loop = loop_config(self.settings, defaults, steps=session.steps, seed=cfg.seed, shuffle=not session.curriculum)
        session.begin(model_name=self.settings.model.name, batch_size=defaults.batch_size)
        target = self._run_target(session, parallel, log)
        trackers = TrackerHub.open(cfg.report_to, run_id=session.run_id, output_dir=self.output_dir,
                                   config=session.config, log=log, main=session.main)
        try:
            answering = answers.at_evaluations(callback, loaded.model, loaded.tokenizer)
            result = run_segment(session, loaded, samples, loop, callback=trackers.callback(answering), log=log,
                                 controls=self.controls, parallel=parallel, evaluator=evaluator)
        except BaseException:
            trackers.finish()
            raise
        trackers.finish({"loss": result.loss_history[-1], "tokens_trained": result.label_tokens,
                         "duration_seconds": time.perf_counter() - started}, step=session.steps)
        run = TrainingRun(
            run_id=session.run_id, final_loss=result.loss_history[-1], loss_history=result.loss_history,
            **finish(evaluator, loaded.model, target, lambda path: self._save_run(path, callback, parallel, log),
                     keep_best=cfg.keep_best, steps=session.steps, result=result),
            duration_seconds=time.perf_counter() - started, samples_seen=result.samples_seen,
            sample_answers=answers.after_training(loaded.model, loaded.tokenizer),
            tokens_trained=result.label_tokens, dataset_format=data.report.name, truncated_samples=result.truncated,
            config={**redact_tree(self.settings.model_dump(mode="json")), "batch_size_resolved": defaults.batch_size,
                    "resolved": {c.setting: c.value for c in defaults.choices} | {"backend": loaded.backend}})
        self.last_run = run
        session.complete(run)
        return run

    def _start_up(self, log: Any) -> Any:
        """The smart defaults, said once with the GGUF verdict, and the memory check (before any weight loads)."""
        defaults = self.smart_defaults()
        log.info("smart_defaults\n" + defaults.table())
        self._log_gguf_support(log)
        self._check_memory(defaults, log)
        return defaults

    def _save_run(self, target: Path, callback: TrainingCallback, parallel: ProcessStrategy, log: Any) -> Path:
        """Save the trained adapter; a sharded model is gathered by every rank first, rank 0 writes."""
        weights = None
        if isinstance(parallel, Parallel) and parallel.sharded:
            weights, _ = parallel.gather(self.model)
            self._sharded = True
        output = self._write(target, callback, weights) if parallel.is_main else target
        if isinstance(parallel, Parallel):
            self._finish_rank(parallel, log, weights if parallel.is_main else None)
        return output

    def _finish_rank(self, parallel: Parallel, log: Any, gathered: dict[str, Any] | None = None) -> None:
        """Wait for rank 0's save, then each rank says which weights it ended with (they must agree).

        A sharded run's ranks hold different shards; only rank 0 has the gathered whole to show.
        """
        import hashlib

        parallel.barrier()
        if gathered is None and parallel.sharded:
            if not parallel.is_main:
                configure()
            log.info("rank_finished", rank=parallel.rank, trainable_sha256="sharded")
            return
        tensors = gathered if gathered is not None else {
            name: param for name, param in self.model.named_parameters() if param.requires_grad}
        digest = hashlib.sha256()
        for name, tensor in sorted(tensors.items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().numpy().tobytes())
        if not parallel.is_main:
            configure()
        log.info("rank_finished", rank=parallel.rank, trainable_sha256=digest.hexdigest())

    def multi_run(self, dataset: Any = None, *, num_runs: int | None = None, steps_per_run: int | None = None,
                  samples_per_run: int | None = None, merge_mode: str | None = None,
                  eval_fraction: float | None = None, lambda_schedule: Any = None, experimental: bool | None = None,
                  resume: str | bool | None = None, force: bool = False, format: str | None = None,
                  text_column: str | None = None, callback: TrainingCallback | None = None,
                  controls: RunControls | None = None) -> Any:
        """Learn from several runs without forgetting: LoRA runs merged with SLAO (arXiv:2512.23017).

        ``dataset`` is a list of datasets (one per run, the paper's setting) or one dataset cut into
        ``num_runs`` (default 5) successive chunks of ``samples_per_run`` rows (default: all rows, evenly).
        Each run trains ``steps_per_run`` (default 100) optimizer steps with a fresh optimizer; a share
        ``eval_fraction`` (default 0.1) of each run's rows is held out, and after every run the merged
        adapter is scored on the held-out rows of all runs so far (the forgetting matrix).
        ``merge_mode`` is ``"slao"`` (default) or ``"none"`` (plain sequential LoRA); ``lambda_schedule`` is
        ``"1/sqrt(i)"`` (default, the paper's), ``"1/i"``, a number or a function of i. DoRA and PiSSA/LoftQ
        inits need ``experimental=True`` (flagged in the report). Arguments left as None take the
        campaign's own values when resuming.

        The merged adapter is saved to ``<output_dir>/lora`` and stays loaded, so ``export()`` works next;
        each run's own adapter goes to ``<output_dir>/multi_run/<run_id>/run-<i>``, the report to
        ``<output_dir>/forgetting.json`` and ``.png``. A campaign resumes at the run it stopped in:
        ``resume=run_id`` (datasets default to the campaign's own), and without ``resume`` an unfinished
        campaign with the same data and settings in ``output_dir`` is continued. Each run writes step
        checkpoints like a single run, so a campaign stopped (``stop()``) or killed in run i resumes from
        run i's last one. ``controls`` as for ``train``. Returns a ``continual.campaign.MultiRunResult``.
        """
        self._check_trainable()
        self._check_sources(*(dataset if isinstance(dataset, list | tuple) else [dataset]), resume=resume)
        check_output_dir(self.output_dir)
        self.controls = controls or self.controls
        self.controls.stop.clear()
        tools = CampaignTools(self.settings, self.output_dir, self._fitted_defaults, self.load, self.save,
                              self.controls)
        callback = callback or TrainingCallback()
        with closing(RunProgress(self.settings.training, get_logger(), shown_elsewhere=callback.shows_progress)) as bar:
            result = run_campaign(tools, dataset, num_runs=num_runs, steps_per_run=steps_per_run,
                                  samples_per_run=samples_per_run, merge_mode=merge_mode,
                                  eval_fraction=eval_fraction, lambda_schedule=lambda_schedule,
                                  experimental=experimental, resume=resume, force=force, format=format,
                                  text_column=text_column, callback=bar.wrap(callback))
        self.last_run = result.run
        return result

    def _save_folder_name(self) -> str:
        return "model" if self.settings.training.mode == "full" else "lora"

    def _saved_dir(self) -> Path:
        """Where the last run saved (``lora-<id8>`` when another run held the folder), else ``<output>/lora``."""
        if self.last_run is not None and self.last_run.output_path:
            return Path(self.last_run.output_path)
        if self._adapter_dir is not None:
            return self._adapter_dir
        return self.output_dir / self._save_folder_name()

    def _run_target(self, session: Any, parallel: ProcessStrategy, log: Any) -> Path:
        """The folder this run saves to: ``<output>/lora`` when it holds the output folder's lock, else its own
        ``lora-<id8>`` beside it (said once, at start), so it never replaces a live run's adapter."""

        owned = parallel.broadcast(session.owns_output if parallel.is_main else None)
        target = self.output_dir / run_folder_name(self._save_folder_name(), session.run_id, owned)
        if not owned and session.main:
            log.warning("output_in_use", saving_to=str(target),
                        reason=f"another run holds {self.output_dir / LOCK_FILE}")
        return target

    def _fitted_defaults(self) -> Any:
        """A campaign's smart defaults, with the single run's memory check (before any weight loads)."""
        defaults = self.smart_defaults()
        self._check_memory(defaults, get_logger())
        return defaults

    def _check_memory(self, defaults: Any, log: Any) -> None:
        """On a GPU, before loading weights: refuse (or, with memory_check="warn", say) a plan that does not fit."""
        for warning in defaults.warnings:
            log.warning("smart_defaults_lowered_lora", change=warning)
        if defaults.device != "cuda" or self.settings.training.memory_check == "off":
            return
        try:
            plan = memory_plan(self.settings, defaults)
        except BackpropagateError:  # no config reachable yet: loading will report the real problem
            return
        check_fit(plan, self.settings)
        if plan.fits is False:
            tips = "; ".join(s.change for s in plan.suggestions)
            log.warning("memory_plan_exceeds_card", estimate_gb=round(plan.total_bytes / 2**30, 1),
                        card_gb=round((plan.capacity_bytes or 0) / 2**30, 1), suggestions=tips)

    def save(self, path: str | Path | None = None, *, callback: TrainingCallback | None = None) -> Path:
        """Write the adapter (PEFT folder) or, for mode="full", the whole model, plus the tokenizer.

        Safetensors; ``path`` (default ``<output_dir>/lora``, or ``<output_dir>/model`` for full
        fine-tuning) is replaced atomically. A PiSSA adapter is saved converted to a plain LoRA adapter
        (rank 2r) that loads on the original base model.
        """
        if self.model is None:
            raise BackpropagateError("STATE_NOT_TRAINED", "there is no trained adapter to save yet.")
        self._check_whole()
        if path is not None:
            check_output_location(path, "save path")
        return self._write(Path(path) if path is not None else self._saved_dir(), callback)

    def _write(self, target: Path, callback: TrainingCallback | None,
               state_dict: dict[str, Any] | None = None) -> Path:
        """``save`` itself; ``state_dict`` holds the gathered weights of a sharded model."""
        assert self._loaded is not None  # save() refuses, and train() loads, before this
        return save_output(self._loaded, target, callback, state_dict)

    def _check_whole(self) -> None:
        if self._sharded:
            raise BackpropagateError(
                "STATE_MODEL_SHARDED", "after an FSDP or DeepSpeed run each process holds only its share "
                "of the weights.",
                hint=f"Use the folder the run saved ({self._saved_dir()}): "
                     "`backprop export` it from one process.")

    def preview(self, data: Any, *, row: int = 1, format: str | None = None,
                text_column: str | None = None) -> RowPreview:
        """What row ``row`` of ``data`` becomes for this model, before training: the rendered text, the token
        ids and which of them are trained (``.segments``, ``.labels``). Loads the tokenizer only."""

        tokenizer = self.tokenizer or resolve_tokenizer(self.settings.model.name,
                                                        trust_remote_code=self.settings.model.trust_remote_code)
        return preview(data, tokenizer, row,
                       train_on_responses=self.settings.training.train_on_responses, format=format,
                       text_column=text_column)

    def chat(self, prompt: str, *, max_new_tokens: int = 64, system: str | None = None, adapter: bool = True) -> str:
        """Greedy reply to one user message, rendered with the model's chat template.

        ``adapter=False`` answers with the base model (the adapter switched off; full fine-tuning has none
        once trained: STATE_NO_ADAPTER). Before training it loads the model and answers with the base
        model, saying so once per call, so "how did the base model answer this?" works at any time.
        """
        if self._adapter_dir is not None and self.model is None:
            self.load_adapter(self._adapter_dir)
        if self.last_run is None and self._adapter_dir is None:
            self.load()
            adapter = not has_adapter(self.model)  # the base: adapter off, or full fine-tuning's loaded weights
            get_logger().warning("chat_untrained", note="the model is not trained yet: this is the base model's "
                                 "answer")
        self._check_whole()
        return greedy_answer(self.model, self.tokenizer, prompt, max_new_tokens=max_new_tokens, system=system,
                             adapter=adapter)

    def export(self, format: str = "gguf", *, quantization: str = "q4_k_m", output: str | Path | None = None,
               overwrite: bool = False, verify: bool = True, ollama: bool = False, ollama_name: str | None = None,
               system: str | None = None) -> Any:
        """Export the trained model: ``"gguf"`` (verified against PyTorch), ``"gguf-adapter"``, ``"merged"``
        or ``"adapter"``; returns an ``export.ExportResult``. Thin wrapper over ``export.export_model``.

        Outputs default to ``<output_dir>/gguf``, ``<output_dir>/merged`` and the saved adapter folder.
        """
        if self.model is None and self._adapter_dir is None:
            raise BackpropagateError("STATE_NOT_TRAINED", "there is no trained model to export yet.")
        self._check_whole()
        saved = self._saved_dir()
        if not saved.is_dir():
            self.save(saved)
        if format == "adapter":
            if output is not None and Path(output).expanduser().resolve() != saved.resolve():
                check_output_path(Path(output), overwrite=overwrite, what="output folder")
                saved = self.save(output)
            write_run_record(saved, self.last_run)
            result = ExportResult(format="adapter", path=saved)
            self._record_export(result)
            return result
        default = self.output_dir / ("merged" if format == "merged" else "gguf")
        result = export_model(saved, format, quantization=quantization, output=output or default,
                              overwrite=overwrite, verify=verify, ollama=ollama, ollama_name=ollama_name,
                              system=system, run=self.last_run,
                              trust_remote_code=self.settings.model.trust_remote_code,
                              base=self._base_if_redacted())
        self._record_export(result)
        (get_logger().info if result.report is None or result.report.passed else get_logger().warning)(
            "export_done", path=str(result.path), verdict=result.verdict())
        return result

    def _base_if_redacted(self) -> str | None:
        """The adapter names its base redacted when the base's path held a credential; this process knows it."""
        name = self.settings.model.name
        return name if redact(name) != name and self.settings.training.mode != "full" else None

    def _record_export(self, result: Any) -> None:
        """Add the export to the run's history row (``runs.get(id).details["exports"]``)."""
        if self.last_run is None:
            return
        store = RunStore.for_output(self.output_dir)
        try:
            exports = store.get(self.last_run.run_id).details.get("exports", [])
            report = getattr(result, "report", None)
            exports.append({"format": result.format, "path": str(result.path), "quantization": result.quantization,
                            "parity_passed": None if report is None else report.passed,
                            "agreement": None if report is None else report.agreement})
            store.set_details(self.last_run.run_id, {"exports": exports})
        except BackpropagateError as exc:  # the export itself succeeded; the history only misses a line
            get_logger().warning("history_not_updated", error=exc.code)

    def push(self, repo_id: str, *, folder: str | Path | None = None, private: bool = False,
             token: str | None = None) -> Any:
        """Push the saved adapter (or an exported ``folder``) to the Hub with a generated model card.

        The token comes from ``token``, ``HF_TOKEN`` or ``hf auth login``; returns an ``export.hub.PushResult``.
        """
        if folder is None:
            if self.model is None:
                raise BackpropagateError("STATE_NOT_TRAINED", "there is no trained adapter to push yet.")
            folder = self._saved_dir()
            if not Path(folder).is_dir():
                self.save(folder)
        return push_folder(folder, repo_id, private=private, token=token, run=self.last_run)
