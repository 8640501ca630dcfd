"""The run history: one SQLite row per training run, in ``<output_dir>/runs.db``.

WAL mode, a busy timeout and one short transaction per write let several training processes share the
file without losing a row. The row of a run whose process is gone (same host, pid no longer alive) is
read as ``interrupted``: that is how a run killed with SIGKILL or a power cut shows up.
"""

from __future__ import annotations

import builtins
import json
import os
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..atomic import disk_full, write_failed
from ..errors import BackpropagateError
from .index import HISTORY_FILE, remember

SCHEMA_VERSION = 2  # 2 added details_json (a campaign's merges and forgetting)
STATUSES = ("running", "completed", "failed", "interrupted")
_BUSY_TIMEOUT_MS = 30_000

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    dataset_path TEXT,
    dataset_hash TEXT,
    config_json TEXT NOT NULL,
    steps INTEGER NOT NULL,
    completed_steps INTEGER NOT NULL DEFAULT 0,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    final_loss REAL,
    loss_history_json TEXT NOT NULL DEFAULT '[]',
    checkpoints_json TEXT NOT NULL DEFAULT '[]',
    output_path TEXT,
    error_code TEXT,
    error_message TEXT,
    pid INTEGER,
    pid_start TEXT,
    hostname TEXT,
    updated_at TEXT NOT NULL,
    details_json TEXT NOT NULL DEFAULT '{}'
)""",
]


@dataclass(frozen=True)
class RunRecord:
    """One run as the history knows it; ``status`` is running, completed, failed or interrupted."""

    run_id: str
    status: str
    model: str
    dataset_path: str | None
    dataset_hash: str | None
    config: dict[str, Any]
    steps: int
    completed_steps: int
    started_at: str
    ended_at: str | None
    final_loss: float | None
    loss_history: list[float] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    output_path: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    pid: int | None = None
    hostname: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    """Extra results: tokens and throughput, exports, the run it replays, a campaign's merges and forgetting."""
    output_dir: str | None = None
    """The output directory whose runs.db holds this run."""

    @property
    def is_campaign(self) -> bool:
        """A multi-run campaign (its settings carry the ``multi_run`` group), not a single training run.

        The one place that decides it, so resume, replay, the CLI and the UI cannot disagree.
        """
        return "multi_run" in self.config


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class RunStore:
    """Reads and writes ``runs.db``. Every method opens its own short-lived connection."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._schema_ready = False

    @classmethod
    def for_output(cls, output_dir: str | Path) -> RunStore:
        return cls(Path(output_dir).expanduser() / HISTORY_FILE)

    # ---- connection ------------------------------------------------------------------------
    @contextmanager
    def _connect(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        try:
            if write:
                self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_failed(self.path, exc) from exc
        try:
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            if write and not self._schema_ready:
                conn.execute("PRAGMA journal_mode=WAL")
                self._ensure_schema(conn)
                self._schema_ready = True
            conn.row_factory = sqlite3.Row
            yield conn
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            conn.close()

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) SELECT ? WHERE NOT EXISTS "
                         "(SELECT 1 FROM schema_version)", (SCHEMA_VERSION,))
            columns = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
            if "details_json" not in columns:  # a version-1 history: add the column, keep every row
                conn.execute("ALTER TABLE runs ADD COLUMN details_json TEXT NOT NULL DEFAULT '{}'")
                conn.execute("UPDATE schema_version SET version = ? WHERE version < ?", (SCHEMA_VERSION, SCHEMA_VERSION))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._check_schema(conn)

    def _check_schema(self, conn: sqlite3.Connection) -> bool:
        """True when the history tables exist; False for a file a writer has only just created."""
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return False
        if not {"schema_version", "runs"} <= tables:
            raise BackpropagateError("STATE_HISTORY_CORRUPT", f"{self.path} is an SQLite file but not a run "
                                     f"history (tables: {', '.join(sorted(tables))}).")
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        if row is None or row[0] is None or row[0] > SCHEMA_VERSION:
            raise BackpropagateError("STATE_HISTORY_CORRUPT", f"{self.path} has history schema version "
                                     f"{row[0] if row else None}; this backpropagate reads version {SCHEMA_VERSION}.",
                                     hint="Upgrade backpropagate, or move the file aside to start a new history.")
        return True

    def _error(self, exc: sqlite3.Error) -> BackpropagateError:
        text = str(exc)
        if any(s in text for s in ("not a database", "malformed", "no such table", "file is encrypted")):
            return BackpropagateError("STATE_HISTORY_CORRUPT", f"{self.path} is not a readable run history "
                                      f"({text}).")
        if disk_full(exc, self.path.parent if "i/o error" in text.lower() else None):  # rolled back: no row lost
            return write_failed(self.path, exc)
        return BackpropagateError("STATE_WRITE_FAILED", f"the run history {self.path} cannot be used: {text}.")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect(write=True) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # ---- reading ---------------------------------------------------------------------------
    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Rows of a query; none while the file is absent or a writer has only just created it."""
        if not self.path.exists():
            return []
        with self._connect(write=False) as conn:
            return conn.execute(sql, params).fetchall() if self._check_schema(conn) else []

    def check(self) -> None:
        """Fail early (``STATE_HISTORY_CORRUPT``) if the file exists but is not our history; creates nothing."""
        self._read("SELECT run_id FROM runs LIMIT 1")

    def list(self) -> list[RunRecord]:
        """Every run, newest first."""
        return [_record(row, self.path.parent) for row in
                self._read("SELECT * FROM runs ORDER BY started_at DESC, rowid DESC")]

    def get(self, run_id: str) -> RunRecord:
        """The run with this id, or the one run whose id starts with it."""
        if not isinstance(run_id, str) or not run_id.strip():
            raise BackpropagateError("INPUT_INVALID_VALUE", f"run id {run_id!r} is invalid: expected a run id "
                                     "or its first characters.")
        run_id = run_id.strip()
        rows = self._read("SELECT * FROM runs WHERE run_id = ?", (run_id,)) or self._read(
            "SELECT * FROM runs WHERE substr(run_id, 1, ?) = ? ORDER BY started_at DESC", (len(run_id), run_id))
        if not rows:
            raise BackpropagateError("STATE_RUN_NOT_FOUND", f"no run {run_id!r} in {self.path}.")
        if len(rows) > 1:
            listed = ", ".join(f"{r['run_id']} ({r['status']}, {r['started_at']})" for r in rows[:5])
            raise BackpropagateError("INPUT_RUN_ID_AMBIGUOUS",
                                     f"{run_id!r} matches {len(rows)} runs: {listed}.")
        return _record(rows[0], self.path.parent)

    # ---- writing ---------------------------------------------------------------------------
    def start(self, *, run_id: str, model: str, dataset_path: str | None, dataset_hash: str | None,
              config: dict[str, Any], steps: int) -> None:
        """Record a new run as ``running`` in this process (and remember its output dir in the index)."""
        remember(self.path.parent)
        now = _now()
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO runs (run_id, status, model, dataset_path, dataset_hash, config_json, steps, "
                "started_at, pid, pid_start, hostname, updated_at) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, model, dataset_path, dataset_hash, json.dumps(config, default=str), steps, now,
                 os.getpid(), _process_token(os.getpid()), socket.gethostname(), now))

    def resume(self, run_id: str, *, config: dict[str, Any], dataset_hash: str | None, steps: int,
               completed_steps: int, loss_history: builtins.list[float]) -> None:
        """Mark an existing run ``running`` again, owned by this process, from its checkpoint's step.

        The check and the claim are one transaction, so two processes can never resume the same run.
        """
        with self._transaction() as conn:
            row = conn.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is not None and _record(row, self.path.parent).status == "running":
                raise BackpropagateError("STATE_RUN_IN_PROGRESS", f"run {run_id} is being trained by pid "
                                         f"{row['pid']} on {row['hostname']}.")
            conn.execute(
                "UPDATE runs SET status='running', config_json=?, dataset_hash=?, steps=?, completed_steps=?, "
                "loss_history_json=?, ended_at=NULL, error_code=NULL, error_message=NULL, final_loss=NULL, "
                "pid=?, pid_start=?, hostname=?, updated_at=? WHERE run_id=?",
                (json.dumps(config, default=str), dataset_hash, steps, completed_steps,
                 json.dumps(loss_history), os.getpid(), _process_token(os.getpid()), socket.gethostname(),
                 _now(), run_id))

    def progress(self, run_id: str, *, completed_steps: int, loss_history: builtins.list[float],
                 checkpoints: builtins.list[str]) -> None:
        """After a checkpoint: how far the run is and which checkpoints exist."""
        with self._transaction() as conn:
            conn.execute("UPDATE runs SET completed_steps=?, loss_history_json=?, checkpoints_json=?, "
                         "updated_at=? WHERE run_id=?",
                         (completed_steps, json.dumps(loss_history), json.dumps(checkpoints), _now(), run_id))

    def steps_done(self, run_id: str, *, completed_steps: int, last_loss: float) -> None:
        """While a run trains: how far it is, between checkpoints (``progress`` lists the checkpoints). One
        transaction: a reader never sees the steps without the loss."""
        with self._transaction() as conn:
            row = conn.execute("SELECT details_json FROM runs WHERE run_id=? AND status='running'",
                               (run_id,)).fetchone()
            if row is None:
                return
            details = {**json.loads(row["details_json"]), "last_loss": last_loss}
            conn.execute("UPDATE runs SET completed_steps=?, details_json=?, updated_at=? WHERE run_id=?",
                         (completed_steps, json.dumps(details, default=str), _now(), run_id))

    def set_details(self, run_id: str, details: dict[str, Any]) -> None:
        """Merge ``details`` into the run's extra results (top-level keys are replaced)."""
        with self._transaction() as conn:
            row = conn.execute("SELECT details_json FROM runs WHERE run_id=?", (run_id,)).fetchone()
            merged = {**(json.loads(row["details_json"]) if row else {}), **details}
            conn.execute("UPDATE runs SET details_json=?, updated_at=? WHERE run_id=?",
                         (json.dumps(merged, default=str), _now(), run_id))

    def mark_replaced(self, output_path: str, *, by: str) -> None:
        """Run ``by`` wrote ``output_path`` anew: earlier runs that recorded it no longer claim it (``show-run``
        says "replaced by"), so no history row points at another run's adapter."""
        with self._transaction() as conn:
            rows = conn.execute("SELECT run_id, details_json FROM runs WHERE output_path=? AND run_id!=?",
                                (output_path, by)).fetchall()
            for row in rows:
                details = json.loads(row["details_json"])
                if details.get("replaced_by"):  # the first run that replaced it is the one to name
                    continue
                details["replaced_by"] = by
                conn.execute("UPDATE runs SET details_json=?, updated_at=? WHERE run_id=?",
                             (json.dumps(details, default=str), _now(), row["run_id"]))

    def finish(self, run_id: str, status: str, *, completed_steps: int | None = None,
               loss_history: builtins.list[float] | None = None, output_path: str | None = None,
               error_code: str | None = None, error_message: str | None = None) -> None:
        """Close a run as ``completed``, ``failed`` or ``interrupted``."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        sets = ["status=?", "ended_at=?", "updated_at=?", "error_code=?", "error_message=?"]
        now = _now()
        values: builtins.list[Any] = [status, now, now, error_code, error_message]
        if completed_steps is not None:
            sets.append("completed_steps=?")
            values.append(completed_steps)
        if loss_history is not None:
            sets += ["loss_history_json=?", "final_loss=?"]
            values += [json.dumps(loss_history), loss_history[-1] if loss_history else None]
        if output_path is not None:
            sets.append("output_path=?")
            values.append(output_path)
        with self._transaction() as conn:
            conn.execute(f"UPDATE runs SET {', '.join(sets)} WHERE run_id=?", (*values, run_id))


def _record(row: sqlite3.Row, output_dir: Path) -> RunRecord:
    status = row["status"]
    if status == "running" and not _alive(row["pid"], row["pid_start"], row["hostname"]):
        status = "interrupted"
    return RunRecord(
        run_id=row["run_id"], status=status, model=row["model"], dataset_path=row["dataset_path"],
        dataset_hash=row["dataset_hash"], config=json.loads(row["config_json"]), steps=row["steps"],
        completed_steps=row["completed_steps"], started_at=row["started_at"], ended_at=row["ended_at"],
        final_loss=row["final_loss"], loss_history=json.loads(row["loss_history_json"]),
        checkpoints=json.loads(row["checkpoints_json"]), output_path=row["output_path"],
        error_code=row["error_code"], error_message=row["error_message"], pid=row["pid"],
        hostname=row["hostname"],
        details=json.loads(row["details_json"]) if "details_json" in row.keys() else {},  # noqa: SIM118 - sqlite3.Row: `in` tests values
        output_dir=os.path.abspath(Path(output_dir).expanduser()))  # as the user named it: no symlink resolved


def _alive(pid: int | None, token: str | None, hostname: str | None) -> bool:
    """Whether the process that owns a ``running`` row still runs (unknowable on another host: assumed)."""
    if pid is None or hostname != socket.gethostname():
        return True
    if os.name == "nt":
        return _alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    current = _process_token(pid)
    if current is None:  # vanished meanwhile (Linux), or no /proc to ask: alive as far as we can tell
        return not Path("/proc/self/stat").exists()
    return token is None or current == token  # same pid but another start time: the run's process is gone


def _process_token(pid: int) -> str | None:
    """The process's start time from /proc (Linux), to tell a reused pid from the original; None elsewhere.

    A zombie (killed, not yet reaped) has no token: it is not running.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return "zombie" if fields[0] == "Z" else fields[19]


def _alive_windows(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    code = ctypes.c_ulong()
    kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
    kernel32.CloseHandle(handle)
    return code.value == 259  # STILL_ACTIVE
