"""The one write path for everything the project produces, and the one rule for where it may go.

Every folder and file (checkpoints, adapters, merged models, GGUF files, reports, history exports) is built
under a name private to its writer (``<target>.<pid>-<random>.partial``) beside the target, and renamed into
place only when complete. *Any* failure while writing (an ``OSError``, safetensors' ``SafetensorError``,
torch's "unexpected pos", numpy's short write, Ctrl-C) removes the partial output before the error goes on,
so a full disk never stays full because of us and the previous output stays whole. Failures become
``STATE_WRITE_FAILED`` naming the target, and say "disk full" when that is what happened.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import re
import secrets
import shutil
import socket
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import BackpropagateError

#: System trees nothing of ours may write into or use as a workspace (a typo like `--output /usr/lib/x` as root).
SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin",
               "/sys", "/usr", "/var/lib", "/var/log", "/System", "/Library")

# How libraries word a full disk when they do not raise OSError(ENOSPC): safetensors, SQLite, numpy's tofile.
_FULL_WORDS = ("no space left on device", "disk quota exceeded", "database or disk is full", "disk full")
_LOW_SPACE = 1 << 20  # less free than this after a failed write: the disk is what failed it (torch's wording)
_PRIVATE = re.compile(r"\.(\d+)-([0-9a-f]{8})\.(partial|old)")  # .<pid>-<host 4 hex><random 4 hex>.partial
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:4]  # a pid means nothing on another machine
# Counted from a random start: two names of one process never collide (random draws did, 1 in ~300 per 20).
_TAGS = itertools.count(secrets.randbelow(1 << 16))


# --------------------------------------------------------------------------------------------
# where outputs may go
# --------------------------------------------------------------------------------------------
def forbidden_roots() -> list[Path]:
    """The system trees of this platform."""
    if sys.platform == "win32":  # pragma: no cover - the test machines are Linux
        windir = os.environ.get("SYSTEMROOT", r"C:\Windows")
        return [Path(windir), Path(os.environ.get("PROGRAMFILES", r"C:\Program Files"))]
    return [Path(p) for p in SYSTEM_DIRS]


def check_output_location(path: str | os.PathLike[str], what: str = "output", *,
                          holds_outputs: bool = False) -> Path:
    """Refuse (``INPUT_OUTPUT_PATH_FORBIDDEN``) an output in a system tree or at the filesystem root.

    The one rule for train, multi-run, export, the data tools and the UI, applied to what is written: a
    file or folder we write may not be the root, sit directly in it, or lie in a system tree. A folder that
    ``holds_outputs`` (a training ``--output``) is checked through the things it will contain, so
    ``/workspace`` is fine and ``/`` is not. Returns the resolved path.
    """
    given = Path(path).expanduser()
    resolved = given.resolve()
    for candidate in dict.fromkeys((Path(os.path.abspath(given)), resolved)):
        written = candidate / "x" if holds_outputs else candidate
        if Path(written.anchor) in (written, written.parent):
            where = "the filesystem root" if candidate == Path(candidate.anchor) else "directly in the filesystem root"
            raise BackpropagateError("INPUT_OUTPUT_PATH_FORBIDDEN", f"{what} {str(path)!r} is {where}.")
        for root in forbidden_roots():
            if candidate == root or root in candidate.parents:
                raise BackpropagateError("INPUT_OUTPUT_PATH_FORBIDDEN",
                                         f"{what} {str(path)!r} is inside the system directory {str(root)!r}.")
    return resolved


def check_writable_dir(path: Path, what: str = "output directory") -> None:
    """Fail early if ``path`` is a file or its nearest existing ancestor cannot be written."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise BackpropagateError("INPUT_OUTPUT_DIR_INVALID", f"{what} {str(path)!r} is a file.")
    probe = _existing_ancestor(path)
    if probe.exists() and (not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK)):
        raise BackpropagateError("INPUT_OUTPUT_DIR_INVALID",
                                 f"{what} {str(path)!r} cannot be written ({str(probe)!r} is not writable).")


def check_output_dir(path: Path, what: str = "output directory") -> Path:
    """Both checks for a folder a run writes into (``--output`` of train and multi-run), before any model loads."""
    resolved = check_output_location(path, what, holds_outputs=True)
    check_writable_dir(Path(path), what)
    return resolved


def _existing_ancestor(path: Path) -> Path:
    probe = Path(path)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return probe


# --------------------------------------------------------------------------------------------
# what a failed write says
# --------------------------------------------------------------------------------------------
def free_bytes(path: Path) -> int | None:
    """Free space on the filesystem that holds ``path`` (or its nearest existing ancestor)."""
    try:
        return shutil.disk_usage(_existing_ancestor(Path(path))).free
    except OSError:
        return None


def disk_full(exc: BaseException | None, where: Path | None = None) -> bool:
    """Whether a write failed for want of space: ENOSPC/EDQUOT or a library's words for it anywhere in the
    exception chain, or (torch says only "unexpected pos") a disk at ``where`` that is now nearly full."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc).lower()
        if any(words in text for words in _FULL_WORDS) or ("requested and" in text and "written" in text):
            return True
        exc = exc.__cause__ or exc.__context__
    free = free_bytes(where) if where is not None else None
    return free is not None and free < _LOW_SPACE


def write_failed(target: Path, exc: BaseException, *, where: Path | None = None) -> BackpropagateError:
    """The ``STATE_WRITE_FAILED`` error for ``target``; call it before removing the partial output, so the
    space it took still shows."""
    if disk_full(exc, where if where is not None else Path(target).parent):
        reason = "disk full"
    elif isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return BackpropagateError("STATE_WRITE_FAILED", f"writing {str(target)!r} failed: {reason}.")


# --------------------------------------------------------------------------------------------
# the write path
# --------------------------------------------------------------------------------------------
def partial_path(target: Path, *, private: bool = True) -> Path:
    """Where ``target`` is built: beside it (same filesystem: the final rename is atomic), under a name no
    other writer shares (pid + random). ``private=False`` for a folder only its own run writes into
    (``checkpoints/<run_id>/step-N.partial``, which ``stale_partials`` reports)."""
    target = Path(target)
    tag = f".{os.getpid()}-{_HOST}{next(_TAGS) % (1 << 16):04x}" if private else ""
    return target.with_name(f"{target.name}{tag}.partial")


@contextmanager
def _removed_on_failure(target: Path, remove: Callable[[], None]) -> Iterator[None]:
    """Run the body; on any failure call ``remove`` and raise ``STATE_WRITE_FAILED`` (Ctrl-C and coded
    errors go on unchanged, unless the disk is full)."""
    try:
        yield
    except BackpropagateError as err:
        error = write_failed(target, err) if err.code != "STATE_WRITE_FAILED" and disk_full(
            err, target.parent) else None
        remove()
        if error is None:
            raise
        raise error from err
    except Exception as exc:
        error = write_failed(target, exc)
        remove()
        raise error from exc
    except BaseException:
        remove()
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(OSError):
            path.unlink(missing_ok=True)


def write_dir_atomically(target: Path, write: Callable[[Path], None], *, private: bool = True) -> Path:
    """Call ``write(folder)`` to fill a private sibling folder, then swap it into ``target``.

    An existing ``target`` stays valid until the new copy is complete: it is renamed aside, the new
    folder renamed in, and only then the old one deleted. Any failure leaves ``target`` as it was and
    nothing else behind.
    """
    target = Path(target).expanduser().resolve()
    check_writable_dir(target.parent, "parent of " + str(target))
    sweep_stale(target)
    partial = partial_path(target, private=private)
    old = partial.with_name(partial.name[: -len(".partial")] + ".old")
    _remove(partial)  # a non-private name: this run's own leftover from a crash
    with _removed_on_failure(target, lambda: _remove(partial)):
        partial.mkdir(parents=True)
        write(partial)
        if target.exists():
            _remove(old)
            target.rename(old)
        try:
            partial.rename(target)
        except BaseException:
            if old.exists() and not target.exists():
                old.rename(target)
            raise
    _remove(old)
    return target


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a private sibling path to fill; rename it onto ``target`` on success, delete it on any error."""
    target = Path(target)
    partial = partial_path(target)
    with _removed_on_failure(target, lambda: _remove(partial)):
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(target)
        yield partial
        os.replace(partial, target)


def write_file_atomically(target: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(partial)`` and move the result onto ``target`` only when it completed."""
    with atomic_file(target) as partial:
        write(partial)
    return Path(target)


def write_text_atomically(target: Path, text: str) -> Path:
    return write_file_atomically(target, lambda p: p.write_text(text, encoding="utf-8"))


@contextmanager
def scratch_dir(parent: Path, label: str, *, create: bool = True) -> Iterator[Path]:
    """A hidden temporary folder beside an output (same filesystem), always removed with what it holds."""
    folder = Path(parent) / f".backprop-{label}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        if create:
            try:
                folder.mkdir(parents=True)
            except OSError as exc:
                raise write_failed(folder, exc) from exc
        yield folder
    finally:
        _remove(folder)


def sweep_stale(target: Path) -> list[Path]:
    """Remove what writers of ``target`` that no longer run (killed) on this machine left beside it; returns
    what went. A ``.old`` copy is put back when the kill came between the two renames and ``target`` is missing.
    """
    target = Path(target)
    try:
        siblings = [p for p in target.parent.iterdir() if p.name.startswith(target.name + ".")]
    except OSError:
        return []
    swept = []
    for path in siblings:
        found = _PRIVATE.fullmatch(path.name[len(target.name):])
        if found is None or found.group(2)[:4] != _HOST or _pid_alive(int(found.group(1))):
            continue
        try:
            if found.group(3) == "old" and not target.exists():
                path.rename(target)
                continue
        except OSError:
            continue
        _remove(path)
        swept.append(path)
    return swept


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # os.kill(pid, 0) would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks (checkpoint manifests, pinned downloads)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
