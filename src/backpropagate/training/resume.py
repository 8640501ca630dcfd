"""Deciding how an interrupted run continues: which run, from which checkpoint, and whether the data and
settings it is resumed with are still the ones it was trained with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import TRAINER_ARGS
from ..errors import BackpropagateError
from ..logs import redact_tree
from ..options import operational_options
from ..storage.store import RunRecord, RunStore
from .checkpoints import CheckpointRef, list_checkpoints, quarantine, stale_partials, verify_checkpoint

# Settings that change how a run is looked after, not what it computes (changes_training=False on the field):
# they may differ on resume.
OPERATIONAL = operational_options()
RESUMABLE = ("interrupted", "failed")


def pick_run(store: RunStore, resume: str | bool) -> RunRecord | None:
    """The run to resume: the given id (or prefix), or with ``True`` the newest unfinished one (or None)."""
    if resume is True:
        return next((r for r in store.list() if r.status in RESUMABLE), None)
    record = store.get(str(resume))
    if record.status == "running":
        raise BackpropagateError("STATE_RUN_IN_PROGRESS", f"run {record.run_id} is still running (pid "
                                 f"{record.pid} on {record.hostname}).")
    if record.status == "completed":
        raise BackpropagateError("STATE_RUN_COMPLETED", f"run {record.run_id} completed all {record.steps} "
                                 f"steps; its adapter is {record.output_path}.")
    return record


def run_config(settings: Any, *, steps: int, data_path: str | None, fingerprint: str, format: str | None,
               text_column: str | None, curriculum: bool = False) -> dict[str, Any]:
    """What a run is, as stored in its history row and checkpoints: settings, steps and the data.

    Redacted, so a token in the model's path (or any other setting) never reaches a file.
    """
    return redact_tree({**settings.model_dump(mode="json"), "steps": steps,
                        "dataset": {"path": data_path, "fingerprint": fingerprint, "format": format,
                                    "text_column": text_column, "curriculum": curriculum}})


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Names of what differs between two run configs (Trainer argument names, steps, dataset...).

    Both are compared redacted: a run recorded before paths were redacted still matches its own settings.
    """
    stored, current = redact_tree(stored), redact_tree(current)
    diffs = []
    for arg, (group, name) in TRAINER_ARGS.items():
        if arg in OPERATIONAL or name not in stored.get(group, {}) or name not in current.get(group, {}):
            continue
        if stored[group][name] != current[group][name]:
            diffs.append(f"{arg} ({stored[group][name]!r} -> {current[group][name]!r})")
    if stored.get("steps") != current.get("steps"):
        diffs.append(f"steps ({stored.get('steps')} -> {current.get('steps')})")
    old, new = stored.get("dataset", {}), current.get("dataset", {})
    if old.get("fingerprint") != new.get("fingerprint"):
        diffs.append(f"dataset content (sha256 {str(old.get('fingerprint'))[:12]} -> "
                     f"{str(new.get('fingerprint'))[:12]})")
    for key in ("format", "text_column", "curriculum"):
        if old.get(key) != new.get(key):
            diffs.append(f"{key} ({old.get(key)!r} -> {new.get(key)!r})")
    return diffs + _evaluation_differences(stored.get("evaluation"), current.get("evaluation"))


def _evaluation_differences(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str]:
    """Another held-out set would make the resumed eval curve a different curve (runs recorded before
    evaluation existed have no such entry: nothing to compare)."""
    if not old or not new:
        return []
    diffs = [f"{key} ({old.get(key)!r} -> {new.get(key)!r})" for key in ("eval_data", "eval_fraction")
             if old.get(key) != new.get(key)]
    if not diffs and old.get("held_out_fingerprint") != new.get("held_out_fingerprint"):
        diffs.append(f"held-out rows (sha256 {str(old.get('held_out_fingerprint'))[:12]} -> "
                     f"{str(new.get('held_out_fingerprint'))[:12]})")
    return diffs


def choose_checkpoint(run_dir: Path, record: RunRecord, log: Any = None, *,
                      expected: list[str] | None = None) -> CheckpointRef | None:
    """The newest checkpoint that passes its checksums, falling back to older ones.

    A damaged checkpoint is renamed ``step-N.invalid`` (kept, never read again). None means the run never
    wrote one, so it restarts from step 0; ``STATE_CHECKPOINT_INVALID`` means it wrote some and none is
    usable any more. ``expected`` are the checkpoints that must exist (default: the ones the history lists).
    """
    for partial in stale_partials(run_dir):
        if log is not None:
            log.warning("stale_partial_checkpoint", path=str(partial),
                        note="an interrupted checkpoint write; ignored, safe to delete")
    first_error: BackpropagateError | None = None
    for ref in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(ref.path)
            return ref
        except BackpropagateError as err:
            first_error = first_error or err
            moved = quarantine(ref.path)
            if log is not None:
                log.warning("checkpoint_invalid", code=err.code, reason=err.message, moved_to=str(moved))
    if first_error is not None:
        raise BackpropagateError("STATE_CHECKPOINT_INVALID",
                                 f"run {record.run_id} has no usable checkpoint left: {first_error.message}")
    expected = record.checkpoints if expected is None else expected
    if expected:
        raise BackpropagateError("STATE_CHECKPOINT_INVALID", f"the checkpoints of run {record.run_id} are "
                                 f"missing ({', '.join(expected)}).")
    return None
