"""The SQLite run history: prefixes, corrupt files, dead processes, and several writers at once."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from backpropagate import BackpropagateError, runs
from backpropagate.storage.store import RunStore


def start(store: RunStore, run_id: str, steps: int = 3) -> None:
    store.start(run_id=run_id, model="tiny", dataset_path="/d.jsonl", dataset_hash="ab" * 32,
                config={"steps": steps}, steps=steps)


def test_ids_prefixes_and_the_round_trip(tmp_path: Path) -> None:
    store = RunStore.for_output(tmp_path)
    assert runs.list(tmp_path) == []
    for run_id in ("aaaa1111", "aaaa2222", "bbbb3333"):
        start(store, run_id)
    store.progress("aaaa1111", completed_steps=2, loss_history=[2.5, 2.25], checkpoints=["/c/step-000002"])
    store.finish("aaaa1111", "completed", completed_steps=3, loss_history=[2.5, 2.25, 2.0], output_path="/o")
    record = runs.get("aaaa1", tmp_path)
    assert (record.run_id, record.status, record.final_loss, record.completed_steps) == ("aaaa1111", "completed",
                                                                                         2.0, 3)
    assert record.loss_history == [2.5, 2.25, 2.0] and record.checkpoints == ["/c/step-000002"]
    assert record.config == {"steps": 3} and record.dataset_hash == "ab" * 32 and record.ended_at
    assert runs.get("bbbb3333", tmp_path).status == "running"  # this process is alive
    assert [r.run_id for r in runs.list(tmp_path)] == ["bbbb3333", "aaaa2222", "aaaa1111"]
    with pytest.raises(BackpropagateError) as info:
        runs.get("aaaa", tmp_path)
    assert info.value.code == "INPUT_RUN_ID_AMBIGUOUS" and "aaaa1111" in info.value.message
    for missing in ("cccc", "a%", "_"):
        with pytest.raises(BackpropagateError) as info:
            runs.get(missing, tmp_path)
        assert info.value.code == "STATE_RUN_NOT_FOUND"
    assert sqlite3.connect(tmp_path / "runs.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_not_a_database_and_a_newer_schema(tmp_path: Path) -> None:
    (tmp_path / "runs.db").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(BackpropagateError) as info:
        runs.list(tmp_path)
    assert info.value.code == "STATE_HISTORY_CORRUPT" and "runs.db" in info.value.message
    other = tmp_path / "newer"
    start(RunStore.for_output(other), "x1")
    sqlite3.connect(other / "runs.db").execute("UPDATE schema_version SET version = 99").connection.commit()
    with pytest.raises(BackpropagateError) as info:
        runs.list(other)
    assert info.value.code == "STATE_HISTORY_CORRUPT" and "Upgrade" in info.value.hint


def _child(db: Path, body: str) -> str:
    return textwrap.dedent(f"""
        import os, sys, time
        from backpropagate.storage.store import RunStore
        store = RunStore({str(db)!r})
    """) + textwrap.dedent(body)


def test_a_killed_process_reads_as_interrupted(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    child = subprocess.Popen([sys.executable, "-c", _child(db, """
        store.start(run_id="killed01", model="m", dataset_path=None, dataset_hash=None, config={}, steps=9)
        print("started", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "started"
    assert runs.get("killed01", tmp_path).status == "running"
    child.send_signal(signal.SIGKILL)
    child.wait()
    record = runs.get("killed01", tmp_path)
    assert record.status == "interrupted" and record.pid == child.pid and record.ended_at is None


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    go = tmp_path / "go"
    body = f"""
        while not os.path.exists({str(go)!r}):  # all four start writing together
            time.sleep(0.005)
        run_id = sys.argv[1]
        store.start(run_id=run_id, model="m", dataset_path=None, dataset_hash=None, config={{}}, steps=40)
        for step in range(1, 41):
            store.progress(run_id, completed_steps=step, loss_history=[1.0 / s for s in range(1, step + 1)],
                           checkpoints=[f"/c/{{run_id}}/step-{{step:06d}}"])
        store.finish(run_id, "completed", completed_steps=40, loss_history=[1.0 / s for s in range(1, 41)],
                     output_path="/o/" + run_id)
    """
    writers = [subprocess.Popen([sys.executable, "-c", _child(db, body), f"writer{i}"]) for i in range(4)]
    time.sleep(2.0)  # let every interpreter start and import
    go.touch()
    started = time.monotonic()
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0, 0]
    records = {r.run_id: r for r in runs.list(tmp_path)}
    assert sorted(records) == [f"writer{i}" for i in range(4)]
    for record in records.values():
        assert record.status == "completed" and record.completed_steps == 40 and len(record.loss_history) == 40
        assert record.checkpoints == [f"/c/{record.run_id}/step-000040"]
    assert time.monotonic() - started < 120
    # They really wrote at the same time: every run started before any of them ended.
    assert max(r.started_at for r in records.values()) < min(r.ended_at for r in records.values())
