"""Who owns an output folder's fixed names (``lora/``, ``model/``): the run holding ``<output>/.backprop.lock``.

A run takes an exclusive ``flock`` on the lock file when it starts and keeps it until it ends; the kernel
drops it when the process dies, so a crash never leaves the folder locked. A second run into the same
folder meanwhile still trains, but saves under its own run id (``lora-<id8>``), so it can never replace
the first run's adapter while that run's history points at it. The file itself is kept (deleting it would
let a third run lock a different inode).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..atomic import write_failed

LOCK_FILE = ".backprop.lock"


class OutputLock:
    """An exclusive hold on one output folder; ``owned`` is False when a live run already holds it."""

    def __init__(self, path: Path, fd: int | None, owned: bool) -> None:
        self.path, self._fd, self.owned = path, fd, owned

    @classmethod
    def acquire(cls, output_dir: Path) -> OutputLock:
        """Try the lock once, without waiting. Where flock does not exist (Windows) or the filesystem
        refuses it, every run owns the folder, as before locks existed."""
        path = Path(output_dir) / LOCK_FILE
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return cls(path, None, True)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_failed(path, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return cls(path, None, False)
        except OSError:  # e.g. ENOLCK on a network filesystem without lock support
            os.close(fd)
            return cls(path, None, True)
        return cls(path, fd, True)

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Let the next run own the folder (closing the descriptor drops the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def run_folder_name(base: str, run_id: str, owned: bool) -> str:
    """``lora`` for the folder's owner, ``lora-<first 8 of the run id>`` for a run beside it."""
    return base if owned else f"{base}-{run_id[:8]}"
