"""The web UI's security rules, kept free of Gradio so they are testable on their own.

* Exposure needs credentials: ``--share`` or a non-loopback ``--host`` without any is refused, with no
  opt-out. Credentials come from ``--auth``, ``--auth-file``, ``BACKPROPAGATE_UI__AUTH_FILE`` or
  ``BACKPROPAGATE_UI__AUTH`` (in that order); the last three keep the password out of the process list.
* Every path the UI reads or writes is resolved (symlinks included) inside one sandbox folder, and the
  sandbox itself may not be, or contain, a system or credential location.
* Uploaded file names are reduced to a safe base name and uploads are size-limited.
* Login attempts are rate-limited per user name, and passwords are compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path, PureWindowsPath

from ..atomic import SYSTEM_DIRS, check_output_location
from ..errors import BackpropagateError
from ..logs import get_logger

DEFAULT_SANDBOX = "~/.backpropagate/ui-outputs"
MAX_UPLOAD_BYTES = 200 * 1024 * 1024

_CREDENTIAL_DIRS = ("~/.ssh", "~/.aws", "~/.config/gcloud", "~/.gnupg", "~/.kube", "~/.docker",
                    "~/.azure", "~/.cache/huggingface/token", "~/.netrc")
_WINDOWS_DIRS = ("c:/windows", "c:/program files", "c:/program files (x86)", "c:/programdata")


AUTH_ENV = "BACKPROPAGATE_UI__AUTH"
AUTH_FILE_ENV = "BACKPROPAGATE_UI__AUTH_FILE"
_AUTH_FILE_MAX_BYTES = 4096


def parse_auth(value: str, source: str = "--auth") -> tuple[str, str]:
    """``user:password`` -> (user, password); the password may itself contain colons. Never echoes it."""
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise BackpropagateError("INPUT_INVALID_VALUE", f"{source} must look like user:password (both non-empty).")
    return user, password


def resolve_auth(auth: str | None = None, auth_file: str | os.PathLike[str] | None = None,
                 environ: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """The UI credentials and where they came from: ``--auth``, ``--auth-file``, then the environment.

    A password on the command line is visible to every user of the machine (``ps``); a file or an
    environment variable is not, which is why those exist.
    """
    env = os.environ if environ is None else environ
    if auth:
        return auth, "--auth"
    if auth_file:
        return read_auth_file(auth_file), "--auth-file"
    if env.get(AUTH_FILE_ENV):
        return read_auth_file(env[AUTH_FILE_ENV]), AUTH_FILE_ENV
    if env.get(AUTH_ENV):
        parse_auth(env[AUTH_ENV], AUTH_ENV)
        return env[AUTH_ENV], AUTH_ENV
    return None, "none"


def read_auth_file(path: str | os.PathLike[str]) -> str:
    """The one ``user:password`` line of a credentials file (trailing newline dropped); warns if others may read it."""
    file = Path(path).expanduser()
    try:
        with file.open("rb") as handle:
            data = handle.read(_AUTH_FILE_MAX_BYTES + 1)
            mode = os.fstat(handle.fileno()).st_mode
    except FileNotFoundError:
        raise _auth_file_error(file, "does not exist") from None
    except OSError as exc:
        raise _auth_file_error(file, f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        text = data.decode("utf-8").removesuffix("\n").removesuffix("\r")
        if len(data) > _AUTH_FILE_MAX_BYTES or "\n" in text or "\r" in text:
            raise ValueError("not one line")
        parse_auth(text)
    except (ValueError, BackpropagateError):  # UnicodeDecodeError is a ValueError
        raise _auth_file_error(file, "must hold one line user:password (both non-empty)") from None
    if os.name == "posix" and mode & 0o077:

        get_logger().warning("auth_file_permissions", path=str(file), mode=oct(mode & 0o777),
                             hint=f"run chmod 600 {file} so that only you can read the UI credentials")
    return text


def _auth_file_error(file: Path, what: str) -> BackpropagateError:
    return BackpropagateError("INPUT_AUTH_FILE_UNREADABLE", f"the UI credentials file {str(file)!r} {what}.")


def is_loopback(host: str) -> bool:
    if host in {"localhost", "ip6-localhost"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, share: bool, auth: str | None) -> None:
    """Refuse to publish the UI beyond this machine without credentials."""
    if (share or not is_loopback(host)) and not auth:
        where = "--share" if share else f"--host {host}"
        raise BackpropagateError(
            "INPUT_AUTH_REQUIRED",
            f"{where} exposes the UI (and your training machine) to other computers; it needs credentials.",
            hint=f"Set {AUTH_ENV}=user:password (or --auth-file PATH, or --auth user:password, which other "
                 "users can see in the process list), or keep the default host and use SSH port forwarding: "
                 "ssh -L 7862:localhost:7862 <training-host>.")


def _forbidden_places() -> list[Path]:
    return [Path(p).expanduser().resolve() for p in (*SYSTEM_DIRS, *_CREDENTIAL_DIRS)]


def _is_within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def sandbox_root(setting: str | os.PathLike[str] | None = None) -> Path:
    """The UI's one writable folder: the setting (BACKPROPAGATE_UI__OUTPUT_DIR) or the default.

    Refused when it is the filesystem root, lies inside a system or credential location, or contains a
    credential location (a sandbox of ``~`` would let the UI write into ``~/.ssh``).
    """
    raw = str(setting) if setting else DEFAULT_SANDBOX
    if PureWindowsPath(raw).drive:
        lowered = raw.replace("\\", "/").rstrip("/").lower()
        if lowered.endswith(":") or any(lowered == d or lowered.startswith(d + "/") for d in _WINDOWS_DIRS):
            raise _forbidden(raw)
    try:  # the rule every output follows (atomic.check_output_location), then the UI's stricter extras
        root = check_output_location(raw, "the UI sandbox", holds_outputs=True)
    except BackpropagateError as exc:
        raise _forbidden(raw) from exc
    home = Path("~").expanduser().resolve()
    for place in _forbidden_places():
        if _is_within(root, place):
            raise _forbidden(raw)
        if _is_within(place, root) and place != home:
            raise _forbidden(raw)
    return root


def _forbidden(raw: str) -> BackpropagateError:
    return BackpropagateError(
        "INPUT_SANDBOX_FORBIDDEN",
        f"the UI sandbox {raw!r} is, or contains, a system or credential location.",
        hint="Set BACKPROPAGATE_UI__OUTPUT_DIR to a folder of your own, e.g. ~/backpropagate-ui.")


def resolve_inside(root: Path, user_path: str | os.PathLike[str]) -> Path:
    """``user_path`` (relative to the sandbox, or absolute) resolved; refused unless inside ``root``."""
    candidate = Path(user_path).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = candidate.resolve()
    if not _is_within(resolved, root.resolve()):
        raise BackpropagateError("INPUT_PATH_OUTSIDE_SANDBOX",
                                 f"{str(user_path)!r} is outside the UI sandbox {str(root)!r}.")
    return resolved


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_upload_name(name: str, *, max_length: int = 120) -> str:
    """A base name with only safe characters: no separators, no leading dots, never empty."""
    base = PureWindowsPath(name.replace("\\", "/")).name
    base = Path(base).name
    base = _UNSAFE.sub("_", base).lstrip("._-")
    stem, dot, suffix = base.rpartition(".")
    if dot and len(base) > max_length:
        base = stem[: max_length - len(suffix) - 1] + "." + suffix
    return base[:max_length] or "upload"


def check_upload_size(size: int, limit: int = MAX_UPLOAD_BYTES) -> None:
    if size > limit:
        raise BackpropagateError("INPUT_UPLOAD_TOO_LARGE",
                                 f"the upload is {size / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB.")


class LoginGuard:
    """Checks credentials in constant time, allowing ``max_attempts`` failures per user per ``window``."""

    def __init__(self, user: str, password: str, *, max_attempts: int = 5, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._user, self._password = user, password
        self._max, self._window, self._clock = max_attempts, window, clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def locked(self, username: str) -> bool:
        with self._lock:
            return len(self._recent(username)) >= self._max

    def _recent(self, username: str) -> deque[float]:
        now = self._clock()
        attempts = self._failures.setdefault(username, deque())
        while attempts and now - attempts[0] > self._window:
            attempts.popleft()
        return attempts

    def __call__(self, username: str, password: str) -> bool:
        """Gradio's ``auth`` callable: True only for the right pair and when not rate-limited."""
        with self._lock:
            attempts = self._recent(username)
            if len(attempts) >= self._max:
                return False
            ok = hmac.compare_digest(username.encode(), self._user.encode()) & hmac.compare_digest(
                password.encode(), self._password.encode())
            if not ok:
                attempts.append(self._clock())
            return bool(ok)
