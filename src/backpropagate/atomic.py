"""Write a folder so that a crash or a full disk never leaves a half-written result in its place."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .errors import BackpropagateError

#: System trees nothing of ours may write into or use as a workspace (a typo like `--output /usr/lib/x` as root).
SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin",
               "/sys", "/usr", "/var/lib", "/var/log", "/System", "/Library")


def check_writable_dir(path: Path, what: str = "output directory") -> None:
    """Fail early if ``path`` is a file or its nearest existing ancestor cannot be written."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise BackpropagateError("INPUT_OUTPUT_DIR_INVALID", f"{what} {str(path)!r} is a file.")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and (not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK)):
        raise BackpropagateError("INPUT_OUTPUT_DIR_INVALID",
                                 f"{what} {str(path)!r} cannot be written ({str(probe)!r} is not writable).")


def write_dir_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to fill a sibling temp folder, then swap it into ``target``.

    An existing ``target`` stays valid until the new copy is complete: it is renamed aside, the new
    folder renamed in, and only then the old one deleted.
    """
    target = Path(target).expanduser().resolve()
    check_writable_dir(target.parent, "parent of " + str(target))
    partial = target.with_name(target.name + ".partial")
    old = target.with_name(target.name + ".old")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        write(partial)
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        partial.rename(target)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if old.exists() and not target.exists():
            old.rename(target)
        reason = "disk full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        raise BackpropagateError("STATE_WRITE_FAILED", f"writing {str(target)!r} failed: {reason}.") from exc
    shutil.rmtree(old, ignore_errors=True)
    return target


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks (checkpoint manifests, pinned downloads)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
