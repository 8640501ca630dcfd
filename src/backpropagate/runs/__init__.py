"""The run history (``<output_dir>/runs.db``), as Python objects: find, compare, replay and export runs.

    >>> from backpropagate import runs
    >>> for run in runs.list():                 # every output directory this user trained into
    ...     print(run.run_id[:8], run.status, run.final_loss)
    >>> runs.get("3f2a").checkpoints           # a unique prefix of the id is enough
    >>> runs.diff("3f2a", "9c1d").config       # only the settings that differ
    >>> runs.replay("3f2a")                    # train again with the same settings and data
    >>> runs.resume("3f2a", "output")          # finish an interrupted run or campaign

A run whose process died without closing its row (SIGKILL, power cut) reads as ``interrupted``. The
CLI's ``list-runs``, ``show-run``, ``diff-runs``, ``replay`` and ``export-runs`` only format these results.
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

from ..storage.store import HISTORY_FILE, STATUSES, RunRecord, RunStore
from .history import (
    EXPORT_FORMATS,
    OutputDirs,
    Resumption,
    RunDiff,
    diff_runs,
    export_runs,
    get_run,
    list_runs,
    prepare_resume,
    replay_run,
)
from .plots import plot_losses, terminal_curve

__all__ = ["EXPORT_FORMATS", "HISTORY_FILE", "STATUSES", "OutputDirs", "Resumption", "RunDiff", "RunRecord", "RunStore",
           "diff", "export", "get", "list", "plot_losses", "prepare_resume", "replay", "resume", "terminal_curve"]


def list(output_dir: OutputDirs = None, *, status: str | None = None,  # noqa: A001 - the API name
         limit: int | None = None) -> builtins.list[RunRecord]:
    """Runs newest first: of ``output_dir`` (one folder or several), or (None) of every folder in the user's index."""
    return list_runs(output_dir, status=status, limit=limit)


def get(run_id: str, output_dir: OutputDirs = None) -> RunRecord:
    """One run by its id or a unique prefix (``STATE_RUN_NOT_FOUND``, ``INPUT_RUN_ID_AMBIGUOUS``), in one
    folder, several, or (None) every known one: the prefix matching the CLI and the UI share."""
    return get_run(run_id, output_dir)


def diff(a: str, b: str, output_dir: OutputDirs = None) -> RunDiff:
    """Runs ``a`` and ``b`` side by side: the differing settings, the dataset hashes, the results."""
    return diff_runs(a, b, output_dir)


def replay(run_id: str, output_dir: str | Path | None = None, *, new_output: str | Path | None = None,
           force: bool = False, callback: Any = None) -> Any:
    """Train the run again with its settings and data; returns the new ``TrainingRun``."""
    return replay_run(run_id, output_dir, new_output=new_output, force=force, callback=callback)


def resume(run_id: str, output_dir: str | Path | None = None, *, data: Any = None, force: bool = False,
           callback: Any = None, model: str | None = None) -> Any:
    """Finish an interrupted run or campaign from its last checkpoint (``prepare_resume(...).run(...)``)."""
    return prepare_resume(run_id, output_dir, model=model).run(data, force=force, callback=callback)


def export(format: str = "jsonl", out: str | Path | None = None, output_dir: str | Path | None = None, *,
           status: str | None = None) -> str:
    """The whole history as ``jsonl``, ``csv`` or ``json`` text, also written to ``out`` when given."""
    return export_runs(format, out, output_dir, status=status)
