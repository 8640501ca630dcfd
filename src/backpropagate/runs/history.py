"""What the history commands do, as Python: find runs across output directories, compare two, replay one,
export them all. The CLI (``backprop list-runs`` ...) only formats these results."""

from __future__ import annotations

import builtins
import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..atomic import check_output_location, write_text_atomically
from ..config import Settings
from ..errors import BackpropagateError, invalid_value
from ..logs import get_logger, is_redacted, redact_tree
from ..storage.index import known_output_dirs
from ..storage.store import STATUSES, RunRecord, RunStore

EXPORT_FORMATS = ("jsonl", "csv", "json")


def _default_output() -> Path:
    return Path(Settings().training.output_dir).expanduser()


OutputDirs = str | Path | Sequence[str | Path] | None
"""Where to look: one output folder, several (the UI's sandbox), or None for every folder the index knows."""


def _several(output_dir: OutputDirs) -> bool:
    return output_dir is not None and not isinstance(output_dir, str | Path)


def _stores(output_dir: OutputDirs) -> builtins.list[RunStore]:
    """The histories to read: the given folder(s), or every one the index knows plus the default output dir."""
    if isinstance(output_dir, str | Path):
        return [RunStore.for_output(output_dir)]
    folders = [*known_output_dirs(), _default_output()] if output_dir is None else [Path(d) for d in output_dir]
    dirs: dict[Path, Path] = {}  # one per real folder, shown by the path the user gave (not a symlink's target)
    for folder in folders:
        if (folder.expanduser() / "runs.db").is_file():
            dirs.setdefault(folder.expanduser().resolve(), Path(os.path.abspath(folder.expanduser())))
    return [RunStore.for_output(d) for d in dirs.values()]


def list_runs(output_dir: OutputDirs = None, *, status: str | None = None,
              limit: int | None = None) -> builtins.list[RunRecord]:
    """Runs newest first, from ``output_dir`` (one folder or several) or (None) every known output directory."""
    if status is not None and status not in STATUSES:
        raise invalid_value("status", status, "one of " + ", ".join(STATUSES))
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise invalid_value("limit", limit, "an integer >= 1")
    found = [r for store in _stores(output_dir) for r in _readable(store, not isinstance(output_dir, str | Path))
             if status is None or r.status == status]
    found.sort(key=lambda r: r.started_at, reverse=True)
    return found[:limit] if limit else found


def _readable(store: RunStore, searching: bool) -> builtins.list[RunRecord]:
    """The store's runs; while searching every known directory, a damaged history is skipped, with a warning."""
    try:
        return store.list()
    except BackpropagateError as exc:
        if not searching or exc.code != "STATE_HISTORY_CORRUPT":
            raise

        get_logger().warning("history_skipped", path=str(store.path), error=exc.message)
        return []


def get_run(run_id: str, output_dir: OutputDirs = None) -> RunRecord:
    """One run by id or unique prefix, in ``output_dir`` (one folder or several) or in any known output directory.

    The one prefix matcher every shell uses: ``STATE_RUN_NOT_FOUND`` when nothing matches,
    ``INPUT_RUN_ID_AMBIGUOUS`` when the prefix fits several runs (in one history or across them).
    """
    stores = _stores(output_dir)
    if not _several(output_dir) and (output_dir is not None or len(stores) == 1):
        return (stores[0] if stores else RunStore.for_output(_default_output())).get(run_id)
    if not isinstance(run_id, str) or not run_id.strip():
        raise BackpropagateError("INPUT_INVALID_VALUE", f"run id {run_id!r} is invalid: expected a run id "
                                 "or its first characters.")
    matches, ambiguous = [], None
    for store in stores:
        try:
            matches.append(store.get(run_id))
        except BackpropagateError as exc:
            if exc.code == "INPUT_RUN_ID_AMBIGUOUS":
                ambiguous = exc
            elif exc.code not in ("STATE_RUN_NOT_FOUND", "STATE_HISTORY_CORRUPT"):
                raise
    if ambiguous is not None:
        raise ambiguous
    if not matches:
        where = "any known output directory" if output_dir is None else "the given output directories"
        raise BackpropagateError("STATE_RUN_NOT_FOUND", f"no run {run_id!r} in {where} ({len(stores)} searched).",
                                 hint="`backprop list-runs` (or the Runs page) lists the recorded runs.")
    if len(matches) > 1:
        listed = ", ".join(f"{r.run_id} ({r.output_dir})" for r in matches[:5])
        raise BackpropagateError("INPUT_RUN_ID_AMBIGUOUS", f"{run_id!r} matches {len(matches)} runs: {listed}.")
    return matches[0]


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"lora": {"r": 8}}`` -> ``{"lora.r": 8}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def duration_seconds(record: RunRecord) -> float | None:
    if record.details.get("duration_seconds") is not None:
        return float(record.details["duration_seconds"])
    if not record.ended_at:
        return None
    return (datetime.fromisoformat(record.ended_at) - datetime.fromisoformat(record.started_at)).total_seconds()


@dataclass
class RunDiff:
    """Two runs side by side: only the configuration keys that differ, and their results."""
    a: RunRecord
    b: RunRecord
    config: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    same_dataset: bool = False
    results: dict[str, tuple[Any, Any]] = field(default_factory=dict)


_NOT_CONFIG = {"batch_size_resolved"}  # derived, shown with the results instead


def diff_runs(a: str, b: str, output_dir: OutputDirs = None) -> RunDiff:
    """Compare runs ``a`` and ``b`` (ids or prefixes, found by :func:`get_run`; they may sit in different folders)."""
    ra, rb = get_run(a, output_dir), get_run(b, output_dir)
    fa, fb = flatten(ra.config), flatten(rb.config)
    keys = sorted((set(fa) | set(fb)) - _NOT_CONFIG)
    config = {k: (fa.get(k), fb.get(k)) for k in keys if fa.get(k) != fb.get(k)}

    def results(r: RunRecord) -> dict[str, Any]:
        return {"status": r.status, "steps": r.completed_steps, "final_loss": r.final_loss,
                "best_loss": min(r.loss_history) if r.loss_history else None,
                "duration_seconds": duration_seconds(r), "tokens_per_second": r.details.get("tokens_per_second"),
                "best_eval_loss": r.details.get("best_eval_loss"), "best_eval_step": r.details.get("best_step"),
                "stop_reason": r.details.get("stop_reason")}

    res_a, res_b = results(ra), results(rb)
    return RunDiff(a=ra, b=rb, config=config, same_dataset=ra.dataset_hash == rb.dataset_hash,
                   results={k: (res_a[k], res_b[k]) for k in res_a})


def replay_run(run_id: str, output_dir: str | Path | None = None, *, new_output: str | Path | None = None,
               force: bool = False, callback: Any = None) -> Any:
    """Train again with the run's settings and data; the new run is recorded with ``replay_of`` = the original.

    The original's dataset must still hash the same (``STATE_DATASET_CHANGED`` unless ``force``). The new
    run goes to ``new_output`` (default ``<output>/replays/<id8>-<time>``), so the original stays as it was.
    """
    from ..data import load_examples  # lazy: datasets, numpy
    from ..trainer import Trainer  # lazy: torch

    record = get_run(run_id, output_dir)
    if record.is_campaign:
        raise BackpropagateError("INPUT_INVALID_VALUE", f"run {record.run_id[:8]} is a multi-run campaign; "
                                 "replaying campaigns is not supported.", hint="Start it again with "
                                 "`backprop multi-run` and the same options.")
    dataset = record.config.get("dataset", {})
    path = record.dataset_path
    if not path:
        raise BackpropagateError("INPUT_FILE_NOT_FOUND", f"run {record.run_id[:8]} was trained on an in-memory "
                                 "dataset, so it cannot be replayed from the history.")

    if is_redacted(path):
        raise BackpropagateError("INPUT_RECORDED_PATH_REDACTED", f"the dataset path of run {record.run_id[:8]} "
                                 f"held a credential and is stored only as {path!r}, so it cannot be replayed.",
                                 hint="Train again with `backprop train --data <file>` and the run's settings "
                                      "(`backprop show-run` lists them).")
    if not Path(path).exists() and ("/" in path or Path(path).suffix):
        raise BackpropagateError("INPUT_FILE_NOT_FOUND", f"the dataset of run {record.run_id[:8]}, {path}, is gone.")
    loaded = load_examples(path, format=dataset.get("format"), text_column=dataset.get("text_column"))
    if loaded.fingerprint != record.dataset_hash and not force:
        raise BackpropagateError("STATE_DATASET_CHANGED", f"{path} changed since run {record.run_id[:8]} "
                                 f"(sha256 {str(record.dataset_hash)[:12]} -> {loaded.fingerprint[:12]}).")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    target = Path(new_output) if new_output else Path(record.output_dir or ".") / "replays" / f"{record.run_id[:8]}-{stamp}"
    trainer = Trainer.from_run(record.run_id, record.output_dir, new_output_dir=target)
    run = trainer.train(path, steps=record.steps, format=dataset.get("format"),
                        text_column=dataset.get("text_column"), curriculum=bool(dataset.get("curriculum")),
                        callback=callback)
    RunStore.for_output(target).set_details(run.run_id, {"replay_of": record.run_id,
                                                         "replay_of_output": record.output_dir})
    RunStore.for_output(record.output_dir or ".").set_details(
        record.run_id, {"replays": [*record.details.get("replays", []), {"run_id": run.run_id,
                                                                         "output_dir": str(target)}]})
    return run


@dataclass(frozen=True)
class Resumption:
    """A run (or campaign) about to be finished: its record and the Trainer rebuilt from its settings.

    Split from :meth:`run` so a shell can wire its Stop (``trainer.stop()``) to the trainer first.
    """
    record: RunRecord
    trainer: Any

    @property
    def is_campaign(self) -> bool:
        return self.record.is_campaign

    def run(self, data: Any = None, *, force: bool = False, callback: Any = None, **kwargs: Any) -> Any:
        """Train from the last checkpoint: a ``TrainingRun``, or a campaign's ``MultiRunResult``."""
        resume = self.trainer.multi_run if self.is_campaign else self.trainer.train
        return resume(data, resume=self.record.run_id, force=force, callback=callback, **kwargs)


def prepare_resume(run_id: str, output_dir: str | Path | None = None, *, model: str | None = None) -> Resumption:
    """The run ``run_id`` (id or unique prefix) of ``output_dir`` (default: the configured one), ready to resume.

    ``model`` replaces a recorded base-model name that held a credential (kept redacted in the history).
    """
    from ..trainer import Trainer  # lazy: torch

    trainer = Trainer.from_run(run_id, output_dir, **({"model": model} if model else {}))
    return Resumption(RunStore.for_output(trainer.output_dir).get(run_id), trainer)


def _row(record: RunRecord) -> dict[str, Any]:
    """Redacted: a history written before redaction covered paths may still hold a token."""
    return redact_tree(asdict(record))


def export_runs(format: str = "jsonl", out: str | Path | None = None, output_dir: str | Path | None = None,
                *, status: str | None = None) -> str:
    """The history as JSON lines, CSV (nested fields as JSON text) or one JSON array; written atomically to
    ``out`` when given. Returns the text."""

    if format not in EXPORT_FORMATS:
        raise invalid_value("format", format, "one of " + ", ".join(EXPORT_FORMATS))
    target = None if out is None else check_output_location(out, "--out")  # before reading any history
    rows = [_row(r) for r in list_runs(output_dir, status=status)]
    if format == "json":
        text = json.dumps(rows, indent=2, default=str) + "\n"
    elif format == "jsonl":
        text = "".join(json.dumps(r, default=str) + "\n" for r in rows)
    else:
        buffer = io.StringIO()
        columns = list(RunRecord.__dataclass_fields__)
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: json.dumps(v, default=str) if isinstance(v, dict | builtins.list) else v
                             for k, v in r.items()})
        text = buffer.getvalue()
    if target is not None:
        if target.is_dir():
            raise BackpropagateError("INPUT_OUTPUT_DIR_INVALID", f"--out {str(target)!r} is a folder; name a file.")
        write_text_atomically(target, text)
    return text
