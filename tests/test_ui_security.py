"""The UI's security rules, without a browser: auth gating, sandbox, upload names, login rate limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from backpropagate.errors import BackpropagateError
from backpropagate.ui.security import (
    LoginGuard,
    check_exposure,
    check_upload_size,
    is_loopback,
    parse_auth,
    resolve_inside,
    safe_upload_name,
    sandbox_root,
)


def code_of(fn, *args, **kwargs) -> str:
    with pytest.raises(BackpropagateError) as info:
        fn(*args, **kwargs)
    return info.value.code


def test_exposure_needs_auth() -> None:
    check_exposure("127.0.0.1", share=False, auth=None)
    check_exposure("localhost", share=False, auth=None)
    check_exposure("::1", share=False, auth=None)
    assert code_of(check_exposure, "127.0.0.1", share=True, auth=None) == "INPUT_AUTH_REQUIRED"
    assert code_of(check_exposure, "0.0.0.0", share=False, auth=None) == "INPUT_AUTH_REQUIRED"
    assert code_of(check_exposure, "192.168.1.5", share=False, auth="") == "INPUT_AUTH_REQUIRED"
    check_exposure("0.0.0.0", share=True, auth="alice:pw")
    assert not is_loopback("example.com") and is_loopback("127.8.9.10")


def test_parse_auth() -> None:
    assert parse_auth("alice:hunter2:x") == ("alice", "hunter2:x")
    for bad in ("alice", ":pw", "alice:"):
        assert code_of(parse_auth, bad) == "INPUT_INVALID_VALUE"


@pytest.mark.parametrize("place", ["/etc", "/usr/local/share/x", "/", "~/.ssh", "~/.aws/creds", "~/.config/gcloud",
                                   "~", "C:\\Windows\\System32", "C:\\", "c:/Program Files/app"])
def test_sandbox_denylist(place: str) -> None:
    assert code_of(sandbox_root, place) == "INPUT_SANDBOX_FORBIDDEN"


def test_sandbox_default_and_own_folder(tmp_path: Path) -> None:
    assert sandbox_root(None) == Path("~/.backpropagate/ui-outputs").expanduser().resolve()
    assert sandbox_root(tmp_path / "ui") == (tmp_path / "ui").resolve()


def test_paths_resolve_inside_the_sandbox(tmp_path: Path) -> None:
    root = sandbox_root(tmp_path / "ui")
    root.mkdir()
    assert resolve_inside(root, "data/train.jsonl") == root / "data" / "train.jsonl"
    assert resolve_inside(root, root / "x.json") == root / "x.json"
    for escape in ("../../etc/passwd", "/etc/passwd", "data/../../outside.txt"):
        assert code_of(resolve_inside, root, escape) == "INPUT_PATH_OUTSIDE_SANDBOX"
    (root / "link").symlink_to("/etc")
    assert code_of(resolve_inside, root, "link/passwd") == "INPUT_PATH_OUTSIDE_SANDBOX"


@pytest.mark.parametrize("name,expected", [
    ("../../etc/passwd", "passwd"), ("..\\..\\windows\\system.ini", "system.ini"), ("my data (1).jsonl",
                                                                                     "my_data_1_.jsonl"),
    (".bashrc", "bashrc"), ("", "upload"), ("..", "upload"), ("a" * 300 + ".jsonl", "a" * 114 + ".jsonl"),
])
def test_upload_names_are_sanitized(name: str, expected: str) -> None:
    assert safe_upload_name(name) == expected


def test_upload_size_limit() -> None:
    check_upload_size(10, limit=10)
    assert code_of(check_upload_size, 11, limit=10) == "INPUT_UPLOAD_TOO_LARGE"


def test_login_guard_rate_limits_and_recovers() -> None:
    now = [0.0]
    guard = LoginGuard("alice", "s3cret", max_attempts=3, window=60, clock=lambda: now[0])
    assert guard("alice", "s3cret")
    assert not guard("alice", "wrong") and not guard("alice", "wrong") and not guard("alice", "wrong")
    assert guard.locked("alice")
    assert not guard("alice", "s3cret")  # locked out even with the right password
    assert guard("bob", "x") is False and not guard.locked("bob")
    now[0] = 61.0
    assert guard("alice", "s3cret")
