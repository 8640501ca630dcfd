"""A full disk through the real CLI (train, export merged, export f16, the history file) on a small tmpfs, and the
write path's contract in-process: any failure while writing is STATE_WRITE_FAILED, and nothing partial stays."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from backpropagate import atomic
from backpropagate.atomic import atomic_file, sweep_stale, write_dir_atomically
from backpropagate.demo import quickstart_path
from backpropagate.errors import BackpropagateError
from backpropagate.storage.store import RunStore
from process_helpers import BACKPROP

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SLACK = 64 * 1024  # what may stay after a failed run: runs.db (16 KiB), the lock file, folders


# --------------------------------------------------------------------------------------------
# a small disk
# --------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str], Path]:
    """``small_disk("3m")`` mounts a tmpfs of that size (root only; skipped where mounting is refused)."""
    if sys.platform != "linux" or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs Linux and mount(8)")

    def mount(size: str) -> Path:
        where = tmp_path / f"disk-{size}-{uuid.uuid4().hex[:6]}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
        request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(where)], check=False))
        return where

    return mount


def used(disk: Path) -> int:
    return shutil.disk_usage(disk).used


def leftovers(disk: Path) -> list[str]:
    """Anything a write leaves while unfinished: private partials, swapped-aside copies, scratch folders."""
    return sorted(str(p) for p in disk.rglob("*") if ".partial" in p.name or p.name.endswith(".old")
                  or p.name.startswith(".backprop-") or ".tmp" in p.name)


def fill(disk: Path, keep: int = 0) -> Path:
    """Fill ``disk`` until only about ``keep`` bytes are free; returns the ballast file."""
    ballast = disk / "ballast"
    with ballast.open("wb") as handle:
        try:
            while shutil.disk_usage(disk).free > keep:
                handle.write(b"\0" * min(65536, max(4096, shutil.disk_usage(disk).free - keep)))
                handle.flush()
        except OSError:
            pass
    return ballast


def backprop(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BACKPROP, *args], capture_output=True, text=True, env=ENV, timeout=300, check=False)


def assert_disk_full(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode != 0, done.stdout[-2000:]
    assert "[STATE_WRITE_FAILED]:" in done.stderr and "disk full" in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-4 adapter of the tiny llama (one step), on the normal disk."""
    from backpropagate import Trainer
    from backpropagate.testing import build_tiny_model

    out = tmp_path_factory.mktemp("adapter")
    trainer = Trainer(str(build_tiny_model("llama", size="tiny", seed=0)), lora_r=4, lora_alpha=8,
                      max_seq_length=64, batch_size=2, output_dir=out, save_steps=0)
    return Path(trainer.train(str(quickstart_path()), steps=1).output_path)


# --------------------------------------------------------------------------------------------
# the CLI on a full disk
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_on_a_full_disk(small_disk: Callable[[str], Path], tiny_llama: Path) -> None:
    """3 MB: the model trains, the first checkpoint (2 MB of rank-256 weights + 1 MB of optimizer) does not fit."""
    disk = small_disk("3m")
    before = used(disk)
    out = disk / "out"
    done = backprop("train", "--model", str(tiny_llama), "--data", str(quickstart_path()), "--steps", "2",
                    "--save-steps", "1", "--max-seq-length", "64", "--batch-size", "2", "--output", str(out),
                    "--lora-r", "256", "--lora-alpha", "512")  # set: above the 64-wide layers, not capped
    assert_disk_full(done)
    assert leftovers(disk) == [] and not (out / "lora").exists()
    assert used(disk) - before < SLACK
    (record,) = RunStore.for_output(out).list()  # the history could still be closed: the space came back
    assert record.status == "failed" and record.error_code == "STATE_WRITE_FAILED"


@pytest.mark.slow
def test_export_merged_on_a_full_disk(small_disk: Callable[[str], Path], adapter: Path) -> None:
    """400 KB: the merged tiny model (560 KB of weights) does not fit."""
    disk = small_disk("400k")
    before = used(disk)
    done = backprop("export", str(adapter), "--format", "merged", "--output", str(disk / "merged"))
    assert_disk_full(done)
    assert str(disk / "merged") in done.stderr
    assert leftovers(disk) == [] and not (disk / "merged").exists()
    assert used(disk) - before < SLACK


@pytest.mark.slow
@pytest.mark.parametrize("size", ["400k", "800k"])
def test_export_f16_on_a_full_disk(small_disk: Callable[[str], Path], adapter: Path, size: str) -> None:
    """400 KB: the scratch merge beside the output fails; 800 KB: the merge fits, the GGUF after it does not."""
    disk = small_disk(size)
    before = used(disk)
    done = backprop("export", str(adapter), "-q", "f16", "--no-verify", "--output", str(disk / "gguf"))
    assert_disk_full(done)
    assert str(disk / "gguf" / "model-f16.gguf") in done.stderr
    assert leftovers(disk) == [] and not (disk / "gguf" / "model-f16.gguf").exists()
    assert used(disk) - before < SLACK


@pytest.mark.slow
def test_history_on_a_full_disk(small_disk: Callable[[str], Path], tiny_llama: Path) -> None:
    """runs.db with an earlier run on a disk that is full: the run fails coded, the history stays whole."""
    disk = small_disk("2m")
    out = disk / "out"
    store = RunStore.for_output(out)
    store.start(run_id="a" * 32, model="m", dataset_path=None, dataset_hash=None, config={}, steps=1)
    store.finish("a" * 32, "completed", completed_steps=1, loss_history=[1.0])
    before = used(disk)
    ballast = fill(disk)
    done = backprop("train", "--model", str(tiny_llama), "--data", str(quickstart_path()), "--steps", "1",
                    "--lora-r", "4", "--lora-alpha", "8", "--max-seq-length", "64", "--output", str(out))
    assert_disk_full(done)
    ballast.unlink()
    assert leftovers(disk) == [] and used(disk) - before < SLACK
    _assert_history_intact(out)
    listed = backprop("list-runs", "--output", str(out), "--json")
    assert listed.returncode == 0 and "a" * 32 in listed.stdout


def test_history_write_that_fills_the_disk(small_disk: Callable[[str], Path]) -> None:
    """A row too large for the space left fails mid-transaction: STATE_WRITE_FAILED, earlier rows intact."""
    disk = small_disk("1m")
    store = RunStore.for_output(disk / "out")
    store.start(run_id="a" * 32, model="m", dataset_path=None, dataset_hash=None, config={}, steps=1)
    store.finish("a" * 32, "completed", completed_steps=1, loss_history=[1.0])
    before = used(disk)
    ballast = fill(disk, keep=96 * 1024)
    with pytest.raises(BackpropagateError) as caught:
        store.start(run_id="b" * 32, model="m", dataset_path=None, dataset_hash=None,
                    config={"big": "x" * 400_000}, steps=1)
    assert caught.value.code == "STATE_WRITE_FAILED" and "disk full" in caught.value.message
    ballast.unlink()
    assert [r.run_id for r in store.list()] == ["a" * 32]
    _assert_history_intact(disk / "out")
    assert used(disk) - before < SLACK


def _assert_history_intact(out: Path) -> None:
    conn = sqlite3.connect(out / "runs.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    assert any(r.run_id == "a" * 32 and r.status == "completed" for r in RunStore.for_output(out).list())


# --------------------------------------------------------------------------------------------
# the write path, in-process
# --------------------------------------------------------------------------------------------
class SafetensorError(Exception):
    """Stands in for safetensors' own exception type (not an OSError)."""


def _half_then(exc: BaseException) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / "weights.bin").write_bytes(b"half" * 1000)
        raise exc
    return write


def _previous(tmp_path: Path) -> Path:
    target = tmp_path / "lora"
    target.mkdir()
    (target / "weights.bin").write_bytes(b"previous")
    return target


@pytest.mark.parametrize("exc", [RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 993152"),
                                 SafetensorError("Error while serializing: IoError(Os { code: 5 })"),
                                 ValueError("8192 requested and 5616 written")])
def test_any_failure_while_writing_a_folder_is_coded_and_leaves_nothing(tmp_path: Path, exc: Exception) -> None:
    target = _previous(tmp_path)
    with pytest.raises(BackpropagateError) as caught:
        write_dir_atomically(target, _half_then(exc))
    assert caught.value.code == "STATE_WRITE_FAILED" and str(target) in caught.value.message
    assert caught.value.__cause__ is exc
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora"]  # no partial, no swapped-aside copy
    assert (target / "weights.bin").read_bytes() == b"previous"


def test_disk_full_is_named_from_the_words_or_the_free_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackpropagateError) as caught:
        write_dir_atomically(tmp_path / "a", _half_then(SafetensorError("No space left on device (os error 28)")))
    assert "disk full" in caught.value.message
    monkeypatch.setattr(atomic, "free_bytes", lambda path: 0)  # torch says only "unexpected pos": the disk tells
    with pytest.raises(BackpropagateError) as caught:
        write_dir_atomically(tmp_path / "b", _half_then(RuntimeError("unexpected pos 993152 vs 993040")))
    assert "disk full" in caught.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_ctrl_c_while_writing_leaves_nothing_and_goes_on(tmp_path: Path) -> None:
    target = _previous(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        write_dir_atomically(target, _half_then(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt), atomic_file(tmp_path / "model.gguf") as partial:
        partial.write_bytes(b"half")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora"]
    assert (target / "weights.bin").read_bytes() == b"previous"


def test_a_file_write_failure_is_coded_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"previous")
    with pytest.raises(BackpropagateError) as caught, atomic_file(tmp_path / "model.gguf") as partial:
        partial.write_bytes(b"half")
        raise RuntimeError("writer broke")
    assert caught.value.code == "STATE_WRITE_FAILED" and "RuntimeError: writer broke" in caught.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]
    assert (tmp_path / "model.gguf").read_bytes() == b"previous"


def test_partial_names_are_private_and_a_dead_writers_leftovers_are_swept(tmp_path: Path) -> None:
    target = tmp_path / "lora"
    names = {atomic.partial_path(target).name for _ in range(20)}
    assert len(names) == 20 and all(n.startswith(f"lora.{os.getpid()}-") for n in names)
    host = next(iter(names)).split("-")[1][:4]  # which machine wrote it: a pid means nothing elsewhere
    other = "ffff" if host != "ffff" else "0000"
    dead = _dead_pid()
    (tmp_path / f"lora.{dead}-{host}0123.partial").mkdir()
    (tmp_path / f"lora.{dead}-{host}89ab.old").mkdir()  # killed between the renames: put back
    (tmp_path / f"lora.{os.getpid()}-{host}0123.partial").mkdir()  # a live writer's: kept
    (tmp_path / f"lora.{dead}-{other}0123.partial").mkdir()  # another machine's writer: kept
    assert [p.name for p in sweep_stale(target)] == [f"lora.{dead}-{host}0123.partial"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["lora", f"lora.{os.getpid()}-{host}0123.partial", f"lora.{dead}-{other}0123.partial"])


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_writer_sees_only_its_own_folder(tmp_path: Path) -> None:
    seen: list[Path] = []
    written = write_dir_atomically(tmp_path / "lora", lambda folder: seen.append(folder) or None)
    assert written == (tmp_path / "lora").resolve() and written.is_dir()
    assert seen[0].parent == written.parent and seen[0].name.endswith(".partial") and not seen[0].exists()
