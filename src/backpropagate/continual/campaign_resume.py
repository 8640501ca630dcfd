"""Which multi-run campaign to continue, and with which arguments: the campaign counterpart of
``training.resume`` (a named campaign must be one and match its data and settings; arguments left as None
take the campaign's own values)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import BackpropagateError, invalid_value
from ..logs import is_redacted
from ..storage.store import RunStore
from ..training.resume import RESUMABLE, config_differences, pick_run


def campaign_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two campaign configs: the run settings and data, then the campaign arguments."""

    diffs = config_differences(stored, current)
    old, new = stored.get("multi_run", {}), current.get("multi_run", {})
    diffs += [f"{key} ({old.get(key)!r} -> {new.get(key)!r})" for key in
              ("num_runs", "steps_per_run", "samples_per_run", "merge_mode", "eval_fraction", "lambda_schedule")
              if old.get(key) != new.get(key)]
    return diffs


def find_campaign(store: Any, resume: str | bool | None, config: dict[str, Any], force: bool, log: Any) -> Any:
    """The history row to continue: the one named, else an unfinished one with this very configuration."""

    if resume not in (None, False, True):
        record = pick_run(store, str(resume))
        assert record is not None  # a named run is found, or pick_run raised a coded error
        if "multi_run" not in record.config:
            raise BackpropagateError("INPUT_INVALID_VALUE", f"run {record.run_id[:8]} is a single run, not a "
                                     "multi-run campaign.", hint=f"Use `backprop resume {record.run_id[:8]}`.")
    else:
        record = next((r for r in store.list() if r.status in RESUMABLE and "multi_run" in r.config
                       and not campaign_differences(r.config, config)), None)
        if record is not None:
            log.info("campaign_continued", run_id=record.run_id, reason="an unfinished campaign with the same "
                     "data and settings is in this output directory")
        return record
    diffs = campaign_differences(record.config, config)
    if diffs and not force:
        raise BackpropagateError("INPUT_RESUME_MISMATCH", f"campaign {record.run_id[:8]} was started with other "
                                 f"data or settings: {'; '.join(diffs)}.")
    if diffs:
        log.warning("resume_forced", differences=diffs)
    return record


def stored_data(output_dir: Path, resume: Any) -> list[str]:
    """The datasets of the campaign being resumed, when the caller did not pass them again."""

    record = RunStore.for_output(output_dir).get(str(resume))
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


def resumed_arguments(output_dir: Path, resume: Any, given: dict[str, Any]) -> dict[str, Any]:
    """Arguments left as None: the campaign's own when resuming one by id, else the defaults."""
    stored: dict[str, Any] = {}
    if resume not in (None, False, True):

        stored = RunStore.for_output(output_dir).get(str(resume)).config.get("multi_run", {})
    out = {}
    for key, default in DEFAULTS.items():
        value = given[key]
        if value is None:
            value = stored.get(key, default)
            if isinstance(value, str) and value.startswith("callable:"):
                raise invalid_value("lambda_schedule", None, "the same function the campaign was started with")
        out[key] = value
    return out
