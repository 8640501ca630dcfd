"""What the UI's buttons do, without Gradio: sandboxed paths, uploads, and the jobs they start.

Every path from the page goes through :func:`security.resolve_inside`; outputs go to
``<sandbox>/runs/<name>``; each button calls the Python API (``Trainer``, ``runs``, ``export``) and never
reimplements it. Handlers raise :class:`BackpropagateError`; the page turns that into ``[CODE]: message``.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from .. import Trainer, TrainingCallback, runs
from ..atomic import write_file_atomically
from ..config import declared_default, resolve_settings
from ..data import load_examples
from ..data.preview import preview_example
from ..data.reference import resolve_tokenizer
from ..errors import BackpropagateError, invalid_value
from ..export.pipeline import export_model
from ..hardware import probe_hardware
from ..plan_table import largest_fitting_preset, smallest_preset
from ..presets import find_model_preset
from ..storage.store import HISTORY_FILE
from ..training.stop import RunInterrupted
from .jobs import JobContext, JobRunner, StopRequested
from .security import MAX_UPLOAD_BYTES, check_upload_size, resolve_inside, safe_upload_name, sandbox_root

# The form's defaults are the declared ones.
MAX_SEQ_LENGTH: int = declared_default("max_seq_length")
PRESET: Literal["quality", "fast"] = declared_default("preset")

__all__ = ["METHODS", "Workspace"]

METHODS: dict[str, dict[str, Any]] = {"LoRA": {}, "DoRA": {"use_dora": True}, "QLoRA": {"load_in_4bit": True}, "full": {"mode": "full"}}
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _positive_int(name: str, value: Any) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise invalid_value(name, value, "a positive whole number") from None
    if number != int(number) or number < 1:
        raise invalid_value(name, value, "a positive whole number")
    return int(number)


def _optional_float(name: str, value: Any) -> float | None:
    if value in (None, "") or (isinstance(value, str) and value.strip().lower() in {"", "auto"}):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise invalid_value(name, value, "a number, or empty for the preset's value") from None
    if number <= 0:
        raise invalid_value(name, value, "a positive number")
    return number


class Workspace:
    """The sandbox folder, the single job runner, and the last trained Trainer (for export without reload)."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, default_model: str | None = None,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES) -> None:
        self.root = sandbox_root(root if root is not None else os.environ.get("BACKPROPAGATE_UI__OUTPUT_DIR"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.default_model = default_model or _default_model()
        self.runner = JobRunner()
        self.max_upload_bytes = max_upload_bytes
        self._trained: tuple[Any, str] | None = None  # (trainer, run_id) of the last job, still loaded
        self._tokenizers: dict[str, Any] = {}

    # ---- paths -----------------------------------------------------------------------------------
    def path(self, user_path: str | os.PathLike[str]) -> Path:
        """A user-typed path resolved inside the sandbox (INPUT_PATH_OUTSIDE_SANDBOX otherwise)."""
        if not str(user_path).strip():
            raise invalid_value("path", user_path, "a file inside the UI sandbox")
        return resolve_inside(self.root, str(user_path).strip())

    def relative(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.root))

    def dataset_path(self, user_path: str) -> Path:
        path = self.path(user_path)
        if not path.exists():
            raise BackpropagateError("INPUT_FILE_NOT_FOUND", f"{user_path!r} does not exist in the UI sandbox.",
                                     hint="Upload the file on the Dataset page, or copy it into "
                                          f"{self.root} and type its path relative to that folder.")
        return path

    def model_name(self, value: str | None) -> str:
        """A preset, a hub id, or a local folder, which must lie inside the sandbox like every other path."""
        name = (value or "").strip() or self.default_model
        if name == self.default_model or find_model_preset(name) is not None:
            return name  # chosen by whoever started the server (argument / BACKPROPAGATE_MODEL__NAME)
        looks_local = name.startswith((".", "/", "~", "\\")) or _exists_here(name) or (self.root / name).exists()
        if looks_local or not _HUB_ID.match(name):
            path = self.path(name)
            if not path.is_dir():
                raise BackpropagateError("INPUT_NOT_A_MODEL_DIR", f"{name!r} is not a model folder in the sandbox.",
                                         hint="Pick a preset, type a hub id (org/name), or put the model folder "
                                              f"inside {self.root}.")
            return str(path)
        return name

    def list_files(self) -> list[str]:
        """Dataset files inside the sandbox (uploads first), relative paths."""
        found = [p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES
                 and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
                 and "runs" not in p.relative_to(self.root).parts[:1]]
        return sorted(self.relative(p) for p in found)

    # ---- uploads ---------------------------------------------------------------------------------
    def save_upload(self, temp_path: str | os.PathLike[str], name: str | None = None) -> str:
        """Copy an uploaded file into ``<sandbox>/uploads`` under a sanitized name; returns its relative path."""
        source = Path(temp_path)
        check_upload_size(source.stat().st_size, self.max_upload_bytes)
        safe = safe_upload_name(name or source.name)
        if not safe.lower().endswith(DATA_SUFFIXES):
            raise BackpropagateError("INPUT_UNSUPPORTED_FILE_TYPE",
                                     f"{safe!r} is not a dataset file ({', '.join(DATA_SUFFIXES)}).")
        folder = self.root / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        target = resolve_inside(self.root, folder / safe)
        stem, suffix = target.stem, target.suffix
        n = 1
        while target.exists() and not _same_file(target, source):
            target = folder / f"{stem}-{n}{suffix}"
            n += 1
        if not target.exists():
            write_file_atomically(target, lambda partial: shutil.copyfile(source, partial))
        return self.relative(target)

    # ---- dataset page ----------------------------------------------------------------------------
    def tokenizer(self, model: str) -> Any:
        name = self.model_name(model)
        if name not in self._tokenizers:
            self._tokenizers[name] = resolve_tokenizer(name)
        return self._tokenizers[name]

    def inspect_dataset(self, user_path: str, model: str | None, *, preview_rows: int = 2,
                        max_seq_length: int = MAX_SEQ_LENGTH) -> dict[str, Any]:
        """Format, row count, the template preview (trained tokens marked) and the data report."""
        path = self.dataset_path(user_path)
        loaded = load_examples(str(path), require_assistant=False)
        tokenizer = self.tokenizer(model or "")
        preview: list[tuple[str, str | None]] = []
        trained = total = 0
        notes: list[str] = []
        for row in range(1, min(preview_rows, len(loaded.examples)) + 1):
            shown = preview_example(tokenizer, loaded.examples, row)  # what `backprop data preview` shows
            preview.append((f"{chr(10) * 2 if preview else ''}----- row {row} -----\n", None))
            preview += [(text, "trained" if flag else None) for text, flag in shown.segments]
            trained, total = trained + shown.trained_tokens, total + len(shown.input_ids)
            notes += [note for note in shown.notes if note not in notes]
        try:
            from ..data import build_report  # lazy: datasets, numpy

            report_text = build_report(str(path), tokenizer=tokenizer, max_seq_length=max_seq_length).to_text()
        except BackpropagateError as exc:
            if exc.code != "DEP_EXTRA_MISSING":
                raise
            report_text = f"[{exc.code}]: {exc.message}\nhint: {exc.hint}"
        return {"path": self.relative(path), "format": loaded.report.name, "reason": loaded.report.reason,
                "rows": loaded.report.total_rows, "preview": preview, "trained_tokens": trained,
                "preview_tokens": total, "report": report_text, "notes": notes}

    # ---- training --------------------------------------------------------------------------------
    def make_trainer(self, *, model: str | None, preset: Literal["quality", "fast"] = PRESET,
                     method: str = "LoRA", learning_rate: Any = None,
                     max_seq_length: Any = MAX_SEQ_LENGTH, output: Path | None = None) -> Any:
        """A Trainer for the form's values; cheap (nothing loads), so bad combinations fail at once."""
        if method not in METHODS:
            raise invalid_value("method", method, ", ".join(METHODS))
        return Trainer(self.model_name(model), output_dir=output or self.new_output_dir(), lora_preset=preset,
                       learning_rate=_optional_float("learning rate", learning_rate),
                       max_seq_length=_positive_int("sequence length", max_seq_length), **METHODS[method])

    def new_output_dir(self, prefix: str = "run") -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = self.root / "runs" / f"{prefix}-{stamp}"
        n = 1
        while folder.exists():
            folder = self.root / "runs" / f"{prefix}-{stamp}-{n}"
            n += 1
        return folder

    def plan_text(self, **form: Any) -> str:
        """The memory plan's report; when it does not fit, the largest smaller preset that does."""
        trainer = self.make_trainer(**form, output=self.root / "runs" / "plan")
        plan = trainer.plan()
        if plan.fits is not False:
            return str(plan.report())
        smaller = largest_fitting_preset(probe_hardware(), below=trainer.settings.model.name)
        advice = (f"the largest preset that fits this machine: {smaller} (pick it as the model)" if smaller
                  else "no model preset fits this machine")
        return f"{plan.report()}\nmodel      {advice}"

    def start_training(self, *, dataset: str, steps: Any, eval_fraction: Any = None, **form: Any) -> str:
        """Start one training run in the background; returns the output folder (relative). ``eval_fraction``
        0 or empty: the automatic hold-out (5 % of a dataset of 1000+ rows)."""

        data = self.dataset_path(dataset)
        steps = _positive_int("steps", steps)
        held_out = None if eval_fraction in (0, "0") else _optional_float("held-out share", eval_fraction)
        output = self.new_output_dir()
        trainer = self.make_trainer(**form, output=output)

        def job(ctx: JobContext) -> dict[str, Any]:
            ctx.say(f"training {trainer.settings.model.name} on {self.relative(data)} for {steps} steps")
            run = self._train_stoppable(ctx, trainer, output, lambda: trainer.train(
                str(data), steps=steps, eval_fraction=held_out,
                callback=TrainingCallback(on_log=ctx.on_log, on_evaluate=ctx.on_evaluate)))
            self._trained = (trainer, run.run_id)
            ctx.say(f"run {run.run_id[:8]} completed: final loss {run.final_loss:.4f}")
            return {"run_id": run.run_id, "final_loss": run.final_loss, "output": self.relative(Path(run.output_path))}

        self.runner.start("train", f"{steps} steps on {self.relative(data)}", job)
        return self.relative(output)

    def start_multi_run(self, *, datasets: str, num_runs: Any, steps_per_run: Any, samples_per_run: Any = None,
                        **form: Any) -> str:
        """Start a multi-run (SLAO) campaign: several files (one per run) or one file in chunks."""
        paths = [str(self.dataset_path(line)) for line in datasets.splitlines() if line.strip()]
        if not paths:
            raise invalid_value("datasets", datasets, "one dataset path per line")
        steps = _positive_int("steps per run", steps_per_run)
        runs_n = None if len(paths) > 1 else _positive_int("runs", num_runs)
        samples = None if samples_per_run in (None, "", 0) else _positive_int("samples per run", samples_per_run)
        output = self.new_output_dir("multi")
        trainer = self.make_trainer(**form, output=output)

        def job(ctx: JobContext) -> dict[str, Any]:
            ctx.say(f"multi-run over {len(paths)} dataset(s), {steps} steps per run")
            ctx.set_result(series=[f"run {i}" for i in range(1, (runs_n or len(paths)) + 1)])
            result = self._train_stoppable(ctx, trainer, output, lambda: trainer.multi_run(
                paths if len(paths) > 1 else paths[0], num_runs=runs_n, steps_per_run=steps,
                samples_per_run=samples, callback=TrainingCallback(on_log=ctx.on_log)))
            self._trained = (trainer, result.run_id)
            return {"run_id": result.run_id, "forgetting": result.report.to_text(),
                    "heatmap": result.forgetting_png, "output": self.relative(Path(result.output_path))}

        self.runner.start("multi-run", f"{len(paths)} dataset(s), {steps} steps per run", job)
        return self.relative(output)

    def _train_stoppable(self, ctx: JobContext, trainer: Any, output: Path, train: Callable[[], Any]) -> Any:
        """``train()`` (a ``trainer.train`` or ``multi_run`` call) with the page's Stop wired to ``trainer.stop()``:
        a checkpoint, then ``stopped``."""

        ctx.on_stop(lambda: trainer.stop("Stop pressed in the UI"))
        try:
            return train()
        except RunInterrupted as exc:
            ctx.set_result(run_id=exc.run_id, output=self.relative(output))
            ctx.say(f"stopped: {exc.message}")
            raise StopRequested(exc.message) from exc

    # ---- runs ------------------------------------------------------------------------------------
    def output_dirs(self) -> list[Path]:
        base = self.root / "runs"
        return sorted(p.parent for p in base.glob(f"*/{HISTORY_FILE}")) if base.is_dir() else []

    def list_runs(self) -> list[Any]:
        """Every run recorded in the sandbox, newest first."""
        return runs.list(self.output_dirs())

    def get_run(self, run_id: str) -> Any:
        """A sandbox run by id or unique prefix: ``runs.get`` over the sandbox's output folders."""
        return runs.get(run_id, self.output_dirs())

    def diff_runs(self, a: str, b: str) -> Any:
        """``runs.diff`` of two sandbox runs (ids or prefixes), wherever in the sandbox each was trained."""
        return runs.diff(a, b, self.output_dirs())

    def plot(self, series: dict[str, list[float]], name: str) -> str | None:
        series = {k: v for k, v in series.items() if v}
        if not series:
            return None
        folder = self.root / ".plots"
        folder.mkdir(exist_ok=True)
        return str(runs.plot_losses(series, folder / f"{name}.png"))

    def start_resume(self, run_id: str) -> str:
        """Finish an interrupted run (or campaign) from its last checkpoint, in the background."""
        record = self.get_run(run_id)
        output = Path(record.output_dir)
        resolve_inside(self.root, output)
        resumption = runs.prepare_resume(record.run_id, output)
        trainer = resumption.trainer

        def job(ctx: JobContext) -> dict[str, Any]:
            callback = TrainingCallback(on_log=ctx.on_log)
            ctx.say(f"resuming run {record.run_id[:8]}")
            if resumption.is_campaign:
                result = self._train_stoppable(ctx, trainer, output, lambda: resumption.run(callback=callback))
                self._trained = (trainer, result.run_id)
                return {"run_id": result.run_id, "forgetting": result.report.to_text(),
                        "heatmap": result.forgetting_png}
            run = self._train_stoppable(ctx, trainer, output, lambda: resumption.run(callback=callback))
            self._trained = (trainer, run.run_id)
            return {"run_id": run.run_id, "final_loss": run.final_loss}

        self.runner.start("resume", f"run {record.run_id[:8]}", job)
        return record.run_id

    # ---- export ----------------------------------------------------------------------------------
    def start_export(self, run_id: str, *, format: str = "gguf", quantization: str = "q4_k_m",
                     ollama: bool = False, ollama_name: str | None = None, overwrite: bool = False) -> str:
        """Export a sandbox run's adapter (GGUF with parity check, adapter GGUF, merged) in the background."""
        record = self.get_run(run_id)
        if record.status != "completed" or not record.output_path:
            raise BackpropagateError("STATE_NOT_TRAINED", f"run {record.run_id[:8]} is {record.status}; only a "
                                     "completed run has a model to export.", hint="Resume it on the Runs page first.")
        source = resolve_inside(self.root, record.output_path)
        output = resolve_inside(self.root, Path(record.output_dir) / ("merged" if format == "merged" else "gguf"))
        name = (ollama_name or "").strip() or None
        if ollama and not name:
            raise invalid_value("Ollama name", ollama_name, "a model name, e.g. my-model")

        def job(ctx: JobContext) -> dict[str, Any]:
            ctx.say(f"exporting run {record.run_id[:8]} as {format} ({quantization})")
            trained = self._trained
            if trained is not None and trained[1] == record.run_id:
                result = trained[0].export(format, quantization=quantization, output=output, overwrite=overwrite,
                                           ollama=ollama, ollama_name=name)
            else:
                result = export_model(source, format, quantization=quantization, output=output,
                                      overwrite=overwrite, ollama=ollama, ollama_name=name)
            report = result.report
            path = Path(result.path)
            return {"run_id": record.run_id, "path": str(path), "format": result.format,
                    "download": str(path) if path.is_file() else None,
                    "parity": report.table() if report is not None else "not verified (merged folder)",
                    "passed": None if report is None else report.passed,
                    "ollama_model": result.ollama_model, "notes": list(result.notes)}

        self.runner.start("export", f"{format} {quantization} of run {record.run_id[:8]}", job)
        return record.run_id


def _exists_here(name: str) -> bool:
    """True when ``name`` exists relative to the server's working directory: then it is a path, not a hub id."""
    return Path(name).exists()


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    import hashlib

    return hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def _default_model() -> str:
    """The model the forms start with: the one the settings name when the user chose one (argument or
    BACKPROPAGATE_MODEL__NAME), else the largest preset whose plan fits this machine, else the smallest preset
    (a CPU: its plan then suggests what makes it fit)."""
    settings = resolve_settings()
    if settings.source("model") != "default":
        return settings.model.name
    return largest_fitting_preset(probe_hardware()) or smallest_preset()
