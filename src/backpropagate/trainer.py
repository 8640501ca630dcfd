"""The ``Trainer`` facade: the 3-line API. It wires config -> data -> model -> loop -> save, nothing more."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Literal

from .atomic import check_writable_dir, write_dir_atomically
from .config import Settings, resolve_settings
from .errors import BackpropagateError, invalid_value
from .logs import bound_run, get_logger
from .training.callbacks import TrainingCallback, TrainingRun


class Trainer:
    """Fine-tune a causal LM with LoRA.

    Every argument left as ``None`` comes from the ``BACKPROPAGATE_*`` environment or the default in
    :mod:`backpropagate.config` (whose field descriptions document each one).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        lora_r: int | None = None,
        lora_alpha: float | None = None,
        lora_dropout: float | None = None,
        target_modules: str | list[str] | None = None,
        learning_rate: float | None = None,
        batch_size: int | Literal["auto"] | None = None,
        gradient_accumulation: int | None = None,
        max_seq_length: int | None = None,
        output_dir: str | Path | None = None,
        train_on_responses: bool | None = None,
        packing: bool | None = None,
        warmup_ratio: float | None = None,
        lr_scheduler: Literal["cosine", "linear", "constant"] | None = None,
        weight_decay: float | None = None,
        max_grad_norm: float | None = None,
        seed: int | None = None,
        trust_remote_code: bool | None = None,
    ) -> None:
        args = {k: v for k, v in locals().items() if k not in {"self", "__class__"}}
        self.settings: Settings = resolve_settings(**args)
        self.model: Any = None
        self.tokenizer: Any = None
        self.last_run: TrainingRun | None = None

    @property
    def output_dir(self) -> Path:
        return Path(self.settings.training.output_dir).expanduser()

    def _load(self) -> None:
        from .training.model import apply_lora, load_model, load_tokenizer, pick_device, pick_dtype

        if self.model is not None:
            return
        device = pick_device()
        self.tokenizer = load_tokenizer(self.settings.model)
        base = load_model(self.settings.model, device, pick_dtype(device))
        self.model = apply_lora(base, self.settings.lora, self.settings.training.seed)

    def train(self, data: Any, steps: int = 100, *, callback: TrainingCallback | None = None,
              format: str | None = None, text_column: str | None = None) -> TrainingRun:
        """Train for ``steps`` optimizer steps on ``data`` and save the adapter to ``<output_dir>/lora``.

        ``data`` is a file path (JSONL, JSON, CSV, Parquet, TXT), a ``save_to_disk`` folder, a hub
        dataset name or a ``datasets.Dataset``; its format is detected unless ``format`` is given.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
            raise invalid_value("steps", steps, "a positive integer")
        check_writable_dir(self.output_dir)
        callback = callback or TrainingCallback()
        run_id = uuid.uuid4().hex
        log = get_logger()
        with bound_run(run_id):
            log.info("run_started", run_id=run_id, model=self.settings.model.name)
            started = time.perf_counter()
            try:
                run = self._train(data, steps, callback, format, text_column, run_id, log, started)
            except Exception as exc:
                callback.fire("on_error", exc)
                log.error("run_failed", error=getattr(exc, "code", type(exc).__name__))
                if isinstance(exc, BackpropagateError):
                    raise
                raise BackpropagateError("RUNTIME_TRAINING_FAILED",
                                         f"training failed: {type(exc).__name__}: {exc}") from exc
            log.info("run_completed", steps=run.steps, final_loss=round(run.final_loss, 5),
                     output=run.output_path, seconds=round(run.duration_seconds, 1))
        callback.fire("on_complete", run)
        return run

    def _train(self, data: Any, steps: int, callback: TrainingCallback, format: str | None,
               text_column: str | None, run_id: str, log: Any, started: float) -> TrainingRun:
        from .data import load_examples, tokenize_examples
        from .hardware import auto_batch_size, gpu_memory_gb
        from .training.engine import LoopConfig, train_loop

        cfg = self.settings.training
        loaded = load_examples(data, require_assistant=cfg.train_on_responses, format=format,
                               text_column=text_column)
        log.info("dataset_loaded", format=loaded.report.name, rows=loaded.report.total_rows,
                 reason=loaded.report.reason)
        self._load()
        samples = tokenize_examples(self.tokenizer, loaded.examples, train_on_responses=cfg.train_on_responses)
        batch_size = auto_batch_size(gpu_memory_gb()) if cfg.batch_size == "auto" else cfg.batch_size
        loop = LoopConfig(
            steps=steps, batch_size=batch_size, gradient_accumulation=cfg.gradient_accumulation,
            learning_rate=cfg.learning_rate, max_seq_length=cfg.max_seq_length, packing=cfg.packing,
            warmup_ratio=cfg.warmup_ratio, lr_scheduler=cfg.lr_scheduler, weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm, seed=cfg.seed)
        result = train_loop(self.model, samples, loop, pad_token_id=self.tokenizer.pad_token_id,
                            callback=callback, log=log)
        output = self.save(self.output_dir / "lora", callback=callback)
        run = TrainingRun(
            run_id=run_id, steps=steps, final_loss=result.loss_history[-1],
            loss_history=result.loss_history, output_path=str(output),
            duration_seconds=time.perf_counter() - started, samples_seen=result.samples_seen,
            tokens_trained=result.label_tokens, dataset_format=loaded.report.name,
            truncated_samples=result.truncated,
            config={**self.settings.model_dump(mode="json"), "batch_size_resolved": batch_size})
        self.last_run = run
        return run

    def save(self, path: str | Path | None = None, *, callback: TrainingCallback | None = None) -> Path:
        """Write the adapter (PEFT folder, safetensors) and the tokenizer; replaces ``path`` atomically."""
        if self.model is None:
            raise BackpropagateError("STATE_NOT_TRAINED", "there is no trained adapter to save yet.")
        target = Path(path) if path is not None else self.output_dir / "lora"

        def write(folder: Path) -> None:
            self.model.save_pretrained(folder, safe_serialization=True)
            self.tokenizer.save_pretrained(folder)

        saved = write_dir_atomically(target, write)
        if callback is not None:
            callback.fire("on_save", str(saved))
        return saved

    def chat(self, prompt: str, *, max_new_tokens: int = 64, system: str | None = None) -> str:
        """Greedy reply of the trained model to one user message, rendered with its chat template."""
        import torch

        from .data.templates import end_of_turn_tokens

        if self.model is None:
            raise BackpropagateError("STATE_NOT_TRAINED", "there is no trained model to chat with yet.")
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        stop = [self.tokenizer.convert_tokens_to_ids(t) for t in end_of_turn_tokens(self.tokenizer)]
        device = next(self.model.parameters()).device
        with torch.no_grad():
            out = self.model.generate(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                                      max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                                      pad_token_id=self.tokenizer.pad_token_id, use_cache=True)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
