"""Checkpoints: everything needed to continue a run bit for bit, written so a crash never damages one.

Layout of one checkpoint, ``<output_dir>/checkpoints/<run_id>/step-000040/``:

    weights.safetensors   the trainable parameters (the LoRA adapter, or every weight in full fine-tuning)
    optimizer.pt          optimizer state   (torch.save; read back with torch.load(weights_only=True))
    scheduler.pt          LR schedule state (same)
    rng.safetensors       torch CPU (and CUDA) generator states
    trainer_state.json    step, micro-batch, data position + packing-order digest, loss history, counters,
                          Python and numpy generator states, the hooks' state (``extra``: evaluation history,
                          best, patience count)
    config.json           the run's resolved configuration and dataset fingerprint
    zero/optimizer-rank<r>.pt  DeepSpeed runs only: each rank's optimizer partition (training.zero)
    manifest.json         sha256 and size of every file above, written last

It is written as ``step-000040.partial/`` and renamed into place only when complete, so the newest
folder without ``.partial`` is always whole. A resume verifies every checksum before trusting one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_dir_atomically
from ..errors import BackpropagateError
from .engine import LoopState
from .rng import capture_rng, restore_rng, rng_from_saved, rng_tensors, rng_to_json
from .sharding import load_full_state
from .zero import load_partition, partition_name

FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class CheckpointRef:
    step: int
    path: Path


@dataclass
class LoadedCheckpoint:
    path: Path
    step: int
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, torch.Tensor]
    trainer_state: dict[str, Any]
    config: dict[str, Any]


def run_checkpoint_dir(output_dir: Path, run_id: str) -> Path:
    return Path(output_dir).expanduser() / CHECKPOINTS_DIR / run_id


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def _trainer_state(state: LoopState, run_id: str, elapsed_seconds: float, rng: Any, *,
                   optimizer_saved: bool) -> dict[str, Any]:
    """trainer_state.json: where the loop stands (step, batch shape, data position, RNG, history so far)."""
    trainer_state = {
        "format": FORMAT_VERSION, "run_id": run_id, "step": state.step, "steps_total": state.steps_total,
        "batch_size": state.batch_size, "gradient_accumulation": state.gradient_accumulation,
        "stream": {**state.stream.state_dict(), "seed": state.stream.seed,
                   "plan_sha256": state.stream.plan_digest()},
        "epochs_announced": state.epochs_announced, "loss_history": state.result.loss_history,
        "samples_seen": state.result.samples_seen, "label_tokens": state.result.label_tokens,
        "tokens_seen": state.tokens_seen, "elapsed_seconds": elapsed_seconds, "rng": rng_to_json(rng),
        "optimizer_saved": optimizer_saved, "extra": state.extra,
    }
    if state.parallel.zero_stage is not None:  # what the partitions fit
        trainer_state["zero"] = {"world_size": state.parallel.world_size, "stage": state.parallel.zero_stage}
    return trainer_state


def write_checkpoint(run_dir: Path, state: LoopState, *, run_id: str, config: dict[str, Any],
                     elapsed_seconds: float = 0.0,
                     gathered: tuple[dict[str, torch.Tensor], dict[str, Any] | None] | None = None,
                     staged: dict[str, Path] | None = None) -> Path:
    """Write the checkpoint of ``state`` (after ``state.step`` steps) atomically; returns its folder.

    ``gathered`` is the full (weights, optimizer state) of a sharded model (``Parallel.gather``); without
    it both are read from ``state``. ``staged`` are files the other ranks wrote (DeepSpeed's optimizer
    partitions), moved in under their names. A failure (a full disk) leaves no partial folder and every
    earlier checkpoint untouched; it is raised as ``STATE_WRITE_FAILED``.
    """
    staged = staged or {}
    missing = [str(path) for path in staged.values() if not path.is_file()]
    if missing:
        raise BackpropagateError("STATE_WRITE_FAILED", f"checkpoint of step {state.step}: rank files {missing} "
                                 "are not visible from rank 0.",
                                 hint="DeepSpeed checkpoints need an output directory every node shares.")
    weights, optimizer_state = gathered or (trainable_weights(state.model), state.optimizer.state_dict())
    step = state.step
    rng = capture_rng()
    # DeepSpeed's partitioned optimizer state is not in optimizer.pt (see training.zero)
    trainer_state = _trainer_state(state, run_id, elapsed_seconds, rng, optimizer_saved=optimizer_state is not None)
    writers: list[tuple[str, Any]] = [
        ("weights.safetensors", lambda path: _save_safetensors(weights, path)),
        ("optimizer.pt", lambda path: torch.save(optimizer_state or {}, path)),
        ("scheduler.pt", lambda path: torch.save(state.scheduler.state_dict(), path)),
        ("rng.safetensors", lambda path: _save_safetensors(rng_tensors(rng), path)),
        ("trainer_state.json", lambda path: path.write_text(json.dumps(trainer_state))),
        ("config.json", lambda path: path.write_text(json.dumps(config, indent=1, default=str))),
        *((name, functools.partial(_move_in, source)) for name, source in staged.items()),
    ]

    def write(folder: Path) -> None:
        files = {name: write_file(folder / name, writer) for name, writer in writers}
        manifest = {"format": FORMAT_VERSION, "run_id": run_id, "step": step, "files": files}
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
        _sync_and_hash(folder / "manifest.json")

    target = Path(run_dir) / step_dir_name(step)
    try:
        saved = write_dir_atomically(target, write, private=False)  # the run's own folder: one writer
    except BackpropagateError as err:
        if err.code != "STATE_WRITE_FAILED":
            raise
        previous = [c for c in list_checkpoints(run_dir) if c.step < step]
        keep = f"the checkpoint of step {previous[-1].step} is intact" if previous else "no earlier checkpoint"
        raise BackpropagateError(
            "STATE_WRITE_FAILED", f"checkpoint of step {step} could not be written: {err.message} ({keep}).",
            hint=f"Free disk space in {Path(run_dir).parent.parent}, then `backprop resume {run_id[:8]}` "
                 "continues from the last checkpoint.") from err.__cause__
    _fsync_dir(saved.parent)
    return saved


def _move_in(source: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, path)


def trainable_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters the optimizer updates, by name (shared parameters once)."""
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))


def write_file(path: Path, writer: Callable[[Path], Any]) -> dict[str, Any]:
    """Write one file of a checkpoint and return its size and sha256, read back after fsync."""
    writer(path)
    return _sync_and_hash(path)


def _sync_and_hash(path: Path) -> dict[str, Any]:
    """fsync the file (so a power cut cannot leave it empty behind a renamed folder) and checksum it."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
        os.fsync(fh.fileno())
    return {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# listing, pruning
# --------------------------------------------------------------------------------------------
def list_checkpoints(run_dir: Path) -> list[CheckpointRef]:
    """Complete checkpoints (a ``step-N`` folder with a manifest), oldest first; ``.partial`` ignored."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for child in run_dir.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / "manifest.json").is_file():
            found.append(CheckpointRef(int(match.group(1)), child))
    return sorted(found, key=lambda c: c.step)


def stale_partials(run_dir: Path) -> list[Path]:
    """Folders left by a write that was interrupted (``.partial``; ``.ranks``: DeepSpeed partitions staged by
    every rank); never read, safe to delete."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for pattern in ("step-*.partial", "step-*.ranks") for p in run_dir.glob(pattern) if p.is_dir())


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints; returns what was removed.

    Each is first renamed ``step-N.deleting`` (atomic), so a crash mid-delete never leaves a half-deleted
    folder that still looks complete.
    """
    removed = []
    for ref in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        doomed = ref.path.with_name(ref.path.name + ".deleting")
        ref.path.rename(doomed)
        removed.append(ref.path)
    for doomed in Path(run_dir).glob("step-*.deleting"):
        shutil.rmtree(doomed, ignore_errors=True)
    return removed


def quarantine(path: Path) -> Path:
    """Rename a damaged checkpoint out of the way (``step-N.invalid``), keeping its files for inspection."""
    target = path.with_name(path.name + ".invalid")
    shutil.rmtree(target, ignore_errors=True)
    path.rename(target)
    return target


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def verify_checkpoint(path: Path) -> dict[str, Any]:
    """The manifest, after checking every file's size and sha256; ``STATE_CHECKPOINT_INVALID`` otherwise."""
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _invalid(path, f"unreadable manifest ({type(exc).__name__})") from None
    for name in ("weights.safetensors", "optimizer.pt", "scheduler.pt", "rng.safetensors",
                 "trainer_state.json", "config.json"):
        if name not in files:
            raise _invalid(path, f"the manifest does not list {name}")
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise _invalid(path, f"{name} is missing")
        if file.stat().st_size != expected["bytes"] or _sync_and_hash(file)["sha256"] != expected["sha256"]:
            raise _invalid(path, f"{name} fails its checksum")
    return manifest


def load_checkpoint(path: Path) -> LoadedCheckpoint:
    """Verify, then read a checkpoint into memory (tensors on the CPU)."""
    from safetensors.torch import load_file

    path = Path(path)
    manifest = verify_checkpoint(path)
    try:
        return LoadedCheckpoint(
            path=path, step=int(manifest["step"]),
            weights=load_file(str(path / "weights.safetensors")),
            optimizer=torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
            scheduler=torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True),
            rng=load_file(str(path / "rng.safetensors")),
            trainer_state=json.loads((path / "trainer_state.json").read_text()),
            config=json.loads((path / "config.json").read_text()))
    except Exception as exc:  # noqa: BLE001 - checksums matched, but the content is still not loadable
        raise _invalid(path, f"cannot be read: {type(exc).__name__}: {str(exc)[:200]}") from exc


def restore_into(state: LoopState, ckpt: LoadedCheckpoint, *, keep_batch: bool = True,
                 check_plan: bool = True) -> bool:
    """Put a checkpoint back into a freshly built loop: it then continues exactly where the run stopped.

    ``keep_batch`` restores the micro-batch and accumulation the run had reached (OOM recovery may have
    lowered them); ``check_plan`` refuses a data stream whose packing order differs from the run's.
    Returns whether the optimizer state came back too: not from or into a DeepSpeed run, whose optimizer
    moments restart.
    """
    ts = ckpt.trainer_state
    params = {name: p for name, p in state.model.named_parameters() if p.requires_grad}
    if set(params) != set(ckpt.weights) or any(params[n].shape != t.shape for n, t in ckpt.weights.items()):
        raise BackpropagateError(
            "INPUT_RESUME_MISMATCH", f"the weights of checkpoint {ckpt.path} do not fit this model "
            "(different adapter rank, target modules or mode).")
    strategy = state.parallel.strategy
    torch_optimizer = bool(ts.get("optimizer_saved", True)) and strategy != "deepspeed"
    if strategy == "fsdp":

        load_full_state(state.model, state.optimizer, ckpt.weights, ckpt.optimizer if torch_optimizer else None)
    else:  # one process, DDP, or DeepSpeed before its engine copies the weights
        with torch.no_grad():
            for name, tensor in ckpt.weights.items():
                params[name].copy_(tensor.to(device=params[name].device, dtype=params[name].dtype))
        if torch_optimizer:
            state.optimizer.load_state_dict(ckpt.optimizer)
    if strategy == "deepspeed":  # the engine is built after this; the loop hands it the partition
        state.engine_state = _zero_partition(state, ckpt)
    optimizer_restored = torch_optimizer or state.engine_state is not None
    state.scheduler.load_state_dict(ckpt.scheduler)
    state.stream.load_state_dict(ts["stream"])
    if check_plan and state.stream.plan_digest() != ts["stream"]["plan_sha256"]:
        raise BackpropagateError("INPUT_RESUME_MISMATCH", "the packing order of the data differs from the "
                                 "run's (changed data, max_seq_length, packing or seed).")
    if keep_batch:
        state.batch_size, state.gradient_accumulation = ts["batch_size"], ts["gradient_accumulation"]
    state.step = ts["step"]
    state.epochs_announced = ts["epochs_announced"]
    state.tokens_seen = ts["tokens_seen"]
    state.result.loss_history = list(ts["loss_history"])
    state.result.samples_seen, state.result.label_tokens = ts["samples_seen"], ts["label_tokens"]
    state.extra = dict(ts.get("extra", {}))
    restore_rng(rng_from_saved(ts["rng"], ckpt.rng))  # last: nothing above may draw from a generator
    return optimizer_restored


def _zero_partition(state: LoopState, ckpt: LoadedCheckpoint) -> dict[str, Any] | None:
    """This rank's DeepSpeed optimizer partition, if the checkpoint has one for this world size and stage."""
    parallel = state.parallel
    if ckpt.trainer_state.get("zero") != {"world_size": parallel.world_size, "stage": parallel.zero_stage}:
        return None
    return load_partition(ckpt.path / partition_name(parallel.rank))


def _invalid(path: Path, detail: str) -> BackpropagateError:
    return BackpropagateError("STATE_CHECKPOINT_INVALID", f"checkpoint {path} is damaged: {detail}.")
