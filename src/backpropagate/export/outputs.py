"""Where an export may write. Files are written through :mod:`backpropagate.atomic` (re-exported here for
the export modules): filled under a private ``.partial`` name beside the target and renamed into place only
when complete, so a full disk or a crash leaves the previous file (or nothing) behind, never a truncated
GGUF that loads and misbehaves.
"""

from __future__ import annotations

from pathlib import Path

from ..atomic import (
    atomic_file,
    check_output_location,
    partial_path,
    write_failed,
    write_file_atomically,
    write_text_atomically,
)
from ..errors import BackpropagateError

__all__ = ["atomic_file", "check_output_path", "partial_path", "write_failed", "write_file_atomically",
           "write_text_atomically"]


def check_output_path(path: Path, *, overwrite: bool, what: str = "output") -> Path:
    """Resolve ``path`` and refuse protected system locations and (unless ``overwrite``) existing files."""
    resolved = check_output_location(path, what)
    if resolved.exists() and not overwrite:
        raise BackpropagateError("STATE_OUTPUT_EXISTS", f"{what} {str(resolved)!r} already exists.",
                                 hint="Pass --overwrite (overwrite=True) to replace it, or choose another path.")
    if resolved.exists() and resolved.is_dir() and resolved.suffix == ".gguf":
        raise BackpropagateError("INPUT_OUTPUT_DIR_INVALID", f"{what} {str(resolved)!r} is a folder.")
    return resolved
