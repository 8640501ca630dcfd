"""What a multi-run campaign keeps on disk between runs, and how each run's data is cut.

A campaign checkpoint is written after every finished run (and one before run 1, holding the initial
adapter) to ``<output>/checkpoints/<run_id>/after-run-NNNN/``: the merged and the last fine-tuned
(A, B) of every layer in safetensors, the counter i, the lambda schedule, the forgetting matrix so far
and the per-run loss histories, plus a manifest with sha256 checksums. It is written to a ``.partial``
folder and renamed into place, so a crash leaves the previous one whole. A resumed campaign continues the
run after the newest good checkpoint from that run's own newest step checkpoint (``run-NNNN/step-N``,
written like a single run's and deleted once the run is merged), else from its beginning; each run is
seeded from the campaign seed and its index, so the result is the same as a campaign never interrupted.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import file_sha256, write_dir_atomically
from ..data.dedup import exact_duplicates
from ..errors import BackpropagateError, invalid_value
from .forgetting import ForgettingReport
from .slao import Pair, SlaoState

PREFIX = "after-run-"
TENSORS = "adapters.safetensors"
STATE = "campaign.json"
MANIFEST = "manifest.json"
KEEP = 2


@dataclass
class RunSlice:
    """The rows one run trains on and the disjoint held-out rows its forgetting scores come from."""

    name: str
    train: list[Any]
    holdout: list[Any]
    format: str
    source: str | None
    duplicates: int = 0  # rows of this run not eligible for the hold-out: their text occurs elsewhere too


@dataclass
class CampaignState:
    """SLAO's state plus what the report and the history need; what a campaign checkpoint restores."""

    slao: SlaoState
    report: ForgettingReport
    loss_histories: list[list[float]] = field(default_factory=list)
    merge_weights: list[float] = field(default_factory=list)
    run_adapters: list[str] = field(default_factory=list)

    @property
    def runs_done(self) -> int:
        return self.slao.runs_merged


def schedule_label(schedule: Any) -> str | float:
    """How the history stores a lambda schedule: its name or number; a function by its name (not checked)."""
    if callable(schedule):
        return f"callable:{getattr(schedule, '__qualname__', repr(schedule))}"
    return schedule


# ---- data ----------------------------------------------------------------------------------------
def cut_slices(loaded: Sequence[Any], names: Sequence[str], *, num_runs: int, samples_per_run: int | None,
               eval_fraction: float, seed: int) -> list[RunSlice]:
    """One slice per run: one dataset each, or successive chunks of ``samples_per_run`` rows of one."""
    if len(loaded) > 1:
        chunks = []
        for k, data in enumerate(loaded):
            rows = list(data.examples)
            if samples_per_run is not None and samples_per_run > len(rows):
                raise BackpropagateError("INPUT_NOT_ENOUGH_DATA", f"dataset {k + 1} ({names[k]}) has {len(rows)} "
                                         f"rows; samples_per_run={samples_per_run} asks for more.")
            chunks.append((rows[:samples_per_run] if samples_per_run else rows, data.report.name, names[k]))
    else:
        rows = list(loaded[0].examples)
        per_run = samples_per_run or len(rows) // num_runs
        if per_run < 2 or per_run * num_runs > len(rows):
            enough = len(rows) // per_run if per_run else 0
            raise BackpropagateError("INPUT_NOT_ENOUGH_DATA",
                                     f"{names[0]} has {len(rows)} rows: {num_runs} runs of {per_run} need "
                                     f"{num_runs * per_run} (enough for {enough} runs of {per_run}).")
        chunks = [(rows[i * per_run:(i + 1) * per_run], loaded[0].report.name, f"{names[0]} [{i * per_run + 1}-"
                   f"{(i + 1) * per_run}]") for i in range(num_runs)]
    repeated = _repeated_rows([rows for rows, _, _ in chunks])
    slices = []
    for i, (rows, fmt, name) in enumerate(chunks, start=1):
        held = max(1, round(len(rows) * eval_fraction))
        if len(rows) - held < 1:
            raise BackpropagateError("INPUT_NOT_ENOUGH_DATA", f"run {i} ({name}) has {len(rows)} rows: nothing "
                                     f"is left to train on after holding out {held}.")
        eligible = [k for k in range(len(rows)) if (i - 1, k) not in repeated]
        if not eligible:
            raise BackpropagateError(
                "SLAO_HOLDOUT_OVERLAP", f"every one of the {len(rows)} rows of run {i} ({name}) also occurs "
                "elsewhere in the campaign's data, so no row can be held out without being trained on.",
                hint="Remove the duplicates first (`backprop data dedup`).")
        picked = set(random.Random(seed + i).sample(eligible, min(held, len(eligible))))
        slices.append(RunSlice(name=name, train=[r for k, r in enumerate(rows) if k not in picked],
                               holdout=[r for k, r in enumerate(rows) if k in picked], format=fmt,
                               source=names[i - 1] if len(loaded) > 1 else names[0],
                               duplicates=len(rows) - len(eligible)))
    return slices


def _repeated_rows(chunks: Sequence[Sequence[Any]]) -> set[tuple[int, int]]:
    """(run, row) of every row whose normalized text occurs more than once in the campaign's data: never held
    out, so no held-out row is also trained on (a held-out row seen in training would score memory)."""

    where = [(run, k) for run, rows in enumerate(chunks) for k in range(len(rows))]
    clusters = exact_duplicates([row for rows in chunks for row in rows]).clusters
    return {where[index] for cluster in clusters for index in cluster}


def check_fraction(eval_fraction: float) -> float:
    if isinstance(eval_fraction, bool) or not isinstance(eval_fraction, int | float) or not 0 < eval_fraction <= 0.5:
        raise invalid_value("eval_fraction", eval_fraction, "a number in (0, 0.5]")
    return float(eval_fraction)


# ---- checkpoints ---------------------------------------------------------------------------------
def _flatten(prefix: str, pairs: dict[str, Pair]) -> dict[str, Any]:
    out = {}
    for name, (a, b) in pairs.items():
        out[f"{prefix}.{name}.A"] = a.detach().cpu().clone()  # own storage: merged may alias last
        out[f"{prefix}.{name}.B"] = b.detach().cpu().clone()
    return out


def _unflatten(prefix: str, tensors: dict[str, Any]) -> dict[str, Pair]:
    names = sorted({k[len(prefix) + 1:-2] for k in tensors if k.startswith(prefix + ".")})
    return {n: (tensors[f"{prefix}.{n}.A"], tensors[f"{prefix}.{n}.B"]) for n in names}


def write_state(run_dir: Path, state: CampaignState) -> Path:
    """Checkpoint the campaign after run ``state.runs_done``; prunes all but the newest ``KEEP``."""
    from safetensors.torch import save_file

    def write(folder: Path) -> None:
        tensors = {**_flatten("merged", state.slao.merged), **_flatten("last", state.slao.last_finetuned)}
        save_file(tensors, str(folder / TENSORS))
        meta = {"runs_merged": state.runs_done, "schedule": schedule_label(state.slao.schedule),
                "report": state.report.to_dict(), "loss_histories": state.loss_histories,
                "merge_weights": state.merge_weights, "run_adapters": state.run_adapters}
        (folder / STATE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        manifest = {name: file_sha256(folder / name) for name in (TENSORS, STATE)}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    path = write_dir_atomically(run_dir / f"{PREFIX}{state.runs_done:04d}", write, private=False)
    for old in list_states(run_dir)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def list_states(run_dir: Path) -> list[Path]:
    """Complete campaign checkpoints, oldest first (``.partial`` leftovers are not listed)."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
             and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def read_state(path: Path, schedule: Any) -> CampaignState:
    """Load and verify one checkpoint; STATE_CHECKPOINT_INVALID when a file is missing or altered."""
    from safetensors.torch import load_file

    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        for name, digest in manifest.items():
            if file_sha256(path / name) != digest:
                raise ValueError(f"{name} does not match its checksum")
        meta = json.loads((path / STATE).read_text(encoding="utf-8"))
        tensors = load_file(str(path / TENSORS))
    except (OSError, ValueError, KeyError) as exc:
        raise BackpropagateError("STATE_CHECKPOINT_INVALID", f"campaign checkpoint {path} is unusable: {exc}.") \
            from exc
    slao = SlaoState(runs_merged=int(meta["runs_merged"]), merged=_unflatten("merged", tensors),
                     last_finetuned=_unflatten("last", tensors), schedule=schedule)
    report = ForgettingReport.from_json(json.dumps(meta["report"]))
    return CampaignState(slao=slao, report=report, loss_histories=meta["loss_histories"],
                         merge_weights=meta["merge_weights"], run_adapters=meta["run_adapters"])


def newest_good_state(run_dir: Path, schedule: Any, log: Any) -> CampaignState | None:
    """The newest checkpoint that verifies; damaged ones are renamed ``.invalid`` and skipped."""
    checkpoints = list_states(run_dir)
    for path in reversed(checkpoints):
        try:
            return read_state(path, schedule)
        except BackpropagateError as exc:
            log.warning("campaign_checkpoint_invalid", path=str(path), error=exc.message)
            path.rename(path.with_name(path.name + ".invalid"))
    if checkpoints:
        raise BackpropagateError("STATE_CHECKPOINT_INVALID", f"every campaign checkpoint in {run_dir} is damaged.")
    return None
