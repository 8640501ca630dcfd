"""The run history of an output directory (``<output_dir>/runs.db``), as Python objects.

    >>> from backpropagate import runs
    >>> for run in runs.list("./output"):
    ...     print(run.run_id[:8], run.status, run.final_loss)
    >>> runs.get("3f2a").checkpoints      # a unique prefix of the id is enough

A run whose process died without closing its row (SIGKILL, power cut) reads as ``interrupted``.
"""

from __future__ import annotations

import builtins
from pathlib import Path

from .store import HISTORY_FILE, STATUSES, RunRecord, RunStore

__all__ = ["HISTORY_FILE", "STATUSES", "RunRecord", "RunStore", "get", "list"]


def _store(output_dir: str | Path | None) -> RunStore:
    if output_dir is None:
        from ..config import Settings

        output_dir = Settings().training.output_dir
    return RunStore.for_output(output_dir)


def list(output_dir: str | Path | None = None) -> builtins.list[RunRecord]:  # noqa: A001 - the API name
    """Every run recorded in ``output_dir`` (default: the configured output directory), newest first."""
    return _store(output_dir).list()


def get(run_id: str, output_dir: str | Path | None = None) -> RunRecord:
    """One run by its id or a unique prefix of it (``STATE_RUN_NOT_FOUND``, ``INPUT_RUN_ID_AMBIGUOUS``)."""
    return _store(output_dir).get(run_id)
