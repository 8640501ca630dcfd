"""The user-level index of output directories that hold a run history, so ``list-runs`` finds them all.

Each history lives in its run's output directory (``<output>/runs.db``); this index only remembers where
those are: ``~/.backpropagate/index.db`` (SQLite, safe for concurrent writers), or under
``BACKPROPAGATE_HOME``. Losing it loses nothing but the convenience; a directory that no longer holds a
history is skipped when read.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

HOME_ENV = "BACKPROPAGATE_HOME"
HISTORY_FILE = "runs.db"  # the history each output directory holds
INDEX_FILE = "index.db"


def home() -> Path:
    """``$BACKPROPAGATE_HOME``, else ``~/.backpropagate``."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".backpropagate").expanduser()


def _connect() -> sqlite3.Connection:
    path = home() / INDEX_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS output_dirs (path TEXT PRIMARY KEY, last_seen TEXT NOT NULL)")
    return conn


def remember(output_dir: str | Path) -> None:
    """Add ``output_dir`` to the index; never fails a run (an unwritable home only loses the index)."""
    try:
        conn = _connect()
        try:
            conn.execute("INSERT INTO output_dirs (path, last_seen) VALUES (?, ?) ON CONFLICT(path) DO UPDATE "
                         "SET last_seen = excluded.last_seen",
                         (os.path.abspath(Path(output_dir).expanduser()), datetime.now(UTC).isoformat()))
        finally:
            conn.close()
    except (OSError, sqlite3.Error):
        pass


def known_output_dirs() -> list[Path]:
    """Indexed output directories that still hold a history, most recently used first."""
    if not (home() / INDEX_FILE).exists():
        return []
    try:
        conn = _connect()
        try:
            rows = conn.execute("SELECT path FROM output_dirs ORDER BY last_seen DESC").fetchall()
        finally:
            conn.close()
    except (OSError, sqlite3.Error):
        return []
    return [Path(r[0]) for r in rows if (Path(r[0]) / HISTORY_FILE).is_file()]
