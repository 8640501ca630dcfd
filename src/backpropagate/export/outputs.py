"""Where an export may write, and how one output file is written so that an error never leaves half of it.

Every file the export produces goes through :func:`write_file_atomically`: it is filled under a
``.partial`` name beside the target and renamed into place only when complete, so a full disk or a crash
leaves the previous file (or nothing) behind, never a truncated GGUF that loads and misbehaves.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..atomic import SYSTEM_DIRS
from ..errors import BackpropagateError


def _forbidden_roots() -> list[Path]:
    if sys.platform == "win32":  # pragma: no cover - the test machines are Linux
        windir = os.environ.get("SYSTEMROOT", r"C:\Windows")
        return [Path(windir), Path(os.environ.get("PROGRAMFILES", r"C:\Program Files"))]
    return [Path(p) for p in SYSTEM_DIRS]


def check_output_path(path: Path, *, overwrite: bool, what: str = "output") -> Path:
    """Resolve ``path`` and refuse protected system locations and (unless ``overwrite``) existing files."""
    resolved = Path(path).expanduser().resolve()
    if Path(resolved.anchor) in (resolved, resolved.parent):
        raise BackpropagateError("INPUT_OUTPUT_PATH_FORBIDDEN",
                                 f"{what} {str(resolved)!r} is (directly in) the filesystem root.")
    for root in _forbidden_roots():
        if resolved == root or root in resolved.parents:
            raise BackpropagateError("INPUT_OUTPUT_PATH_FORBIDDEN",
                                     f"{what} {str(path)!r} is inside the system directory {str(root)!r}.")
    if resolved.exists() and not overwrite:
        raise BackpropagateError("STATE_OUTPUT_EXISTS", f"{what} {str(resolved)!r} already exists.",
                                 hint="Pass --overwrite (overwrite=True) to replace it, or choose another path.")
    if resolved.exists() and resolved.is_dir() and resolved.suffix == ".gguf":
        raise BackpropagateError("INPUT_OUTPUT_DIR_INVALID", f"{what} {str(resolved)!r} is a folder.")
    return resolved


def _disk_full(exc: OSError) -> bool:
    """ENOSPC/EDQUOT, or numpy's errno-less short write ("8192 requested and 5616 written"), which is what a
    full disk looks like through ``ndarray.tofile``."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return exc.errno is None and "requested and" in text and "written" in text


def write_failed(target: Path, exc: OSError) -> BackpropagateError:
    reason = "disk full" if _disk_full(exc) else (exc.strerror or str(exc))
    return BackpropagateError("STATE_WRITE_FAILED", f"writing {str(target)!r} failed: {reason}.")


def partial_path(target: Path) -> Path:
    return target.with_name(target.name + ".partial")


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a sibling ``.partial`` path to fill; rename it onto ``target`` on success, delete it on error."""
    target = Path(target)
    partial = partial_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.unlink(missing_ok=True)
    except OSError as exc:
        raise write_failed(target, exc) from exc
    try:
        yield partial
        os.replace(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise write_failed(target, exc) from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_file_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(partial)`` and move the result onto ``target`` only when it completed."""
    with atomic_file(target) as partial:
        write(partial)
    return Path(target)


def write_text_atomically(target: Path, text: str) -> Path:
    return write_file_atomically(target, lambda p: p.write_text(text, encoding="utf-8"))
