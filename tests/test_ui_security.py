"""The UI's security rules, without a browser: auth gating, credentials from the environment or a file (kept
out of the process list), sandbox, upload names, login rate limit."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from backpropagate.errors import BackpropagateError
from backpropagate.ui.security import (
    AUTH_ENV,
    AUTH_FILE_ENV,
    LoginGuard,
    check_exposure,
    check_upload_size,
    is_loopback,
    parse_auth,
    read_auth_file,
    resolve_auth,
    resolve_inside,
    safe_upload_name,
    sandbox_root,
)

BACKPROP = str(Path(sys.executable).with_name("backprop"))
PASSWORD = "Pr0cess-list-S3cret"


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


def test_credentials_precedence_flag_file_env(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text("alice:from-flag-file\n")
    second.write_text("bob:from-env-file\r\n")
    for f in (first, second):
        f.chmod(0o600)
    env = {AUTH_ENV: "carol:from-env", AUTH_FILE_ENV: str(second)}
    assert resolve_auth("dave:from-flag", first, env) == ("dave:from-flag", "--auth")
    assert resolve_auth(None, first, env) == ("alice:from-flag-file", "--auth-file")
    assert resolve_auth(None, None, env) == ("bob:from-env-file", AUTH_FILE_ENV)
    assert resolve_auth(None, None, {AUTH_ENV: "carol:from-env"}) == ("carol:from-env", AUTH_ENV)
    assert resolve_auth(None, None, {AUTH_ENV: ""}) == (None, "none")
    with pytest.raises(BackpropagateError) as info:
        resolve_auth(None, None, {AUTH_ENV: "no-colon-here"})
    assert info.value.code == "INPUT_INVALID_VALUE" and AUTH_ENV in info.value.message
    assert "no-colon-here" not in str(info.value)


def test_bad_credentials_files_are_coded_errors(tmp_path: Path) -> None:
    cases = {"missing": None, "empty": b"", "two-lines": b"alice:pw\nbob:pw\n", "no-password": b"alice:\n",
             "binary": b"alice:\xff\xfe\n", "huge": b"alice:" + b"x" * 5000}
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(BackpropagateError) as info:
            read_auth_file(path)
        assert info.value.code == "INPUT_AUTH_FILE_UNREADABLE" and info.value.hint, name
        assert str(path) in info.value.message and "pw" not in info.value.message
    with pytest.raises(BackpropagateError) as info:
        read_auth_file(tmp_path)  # a folder
    assert info.value.code == "INPUT_AUTH_FILE_UNREADABLE"


def test_a_credentials_file_others_can_read_is_warned_about(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "auth"
    path.write_text(f"alice:{PASSWORD}\n")
    path.chmod(0o600)
    assert read_auth_file(path) == f"alice:{PASSWORD}"
    assert "auth_file_permissions" not in capsys.readouterr().err
    path.chmod(0o644)
    assert read_auth_file(path) == f"alice:{PASSWORD}"
    err = capsys.readouterr().err
    assert "auth_file_permissions" in err and "chmod 600" in err and PASSWORD not in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ui(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    """`backprop ui --host 0.0.0.0` in a subprocess, waited on until it serves (or exits)."""
    port, log = _free_port(), tmp_path / f"ui-{len(list(tmp_path.glob('ui-*.log')))}.log"
    full = {**{k: v for k, v in os.environ.items() if k not in (AUTH_ENV, AUTH_FILE_ENV)}, "HOME": str(tmp_path),
            "BACKPROPAGATE_UI__OUTPUT_DIR": str(tmp_path / "sandbox"), "GRADIO_ANALYTICS_ENABLED": "False", **env}
    with log.open("wb") as out:
        proc = subprocess.Popen([BACKPROP, "ui", "--host", "0.0.0.0", "--port", str(port), *args], env=full,
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                break
        except urllib.error.HTTPError:
            break
        except OSError:
            time.sleep(0.5)
    return proc, port, log


def _login(port: int, user: str, password: str) -> int:
    data = urllib.parse.urlencode({"username": user, "password": password}).encode()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", data=data, timeout=30) as response:
            assert json.loads(response.read()) == {"success": True}
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_ui_takes_credentials_from_env_or_file_not_the_process_list(tmp_path: Path) -> None:
    refused, _, log = _ui(tmp_path, {})
    assert refused.wait(60) == 1 and "[INPUT_AUTH_REQUIRED]" in log.read_text() and AUTH_ENV in log.read_text()
    secret_file = tmp_path / "ui-auth"
    secret_file.write_text(f"alice:{PASSWORD}\n")
    secret_file.chmod(0o600)
    for env, args in (({AUTH_ENV: f"alice:{PASSWORD}"}, ()), ({}, ("--auth-file", str(secret_file))),
                      ({AUTH_FILE_ENV: str(secret_file)}, ())):
        proc, port, log = _ui(tmp_path, env, *args)
        try:
            assert proc.poll() is None, log.read_text()
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            assert b"0.0.0.0" in cmdline and PASSWORD.encode() not in cmdline
            assert _login(port, "alice", "wrong-password") == 400
            assert _login(port, "alice", PASSWORD) == 200
        finally:
            proc.terminate()
            proc.wait(30)
        text = log.read_text()
        assert PASSWORD not in text and "auth_on_command_line" not in text and "login='on (" in text


def test_a_bad_credentials_file_stops_the_cli_with_a_code(tmp_path: Path) -> None:
    proc, _, log = _ui(tmp_path, {AUTH_FILE_ENV: str(tmp_path / "nope")})
    assert proc.wait(60) == 1
    text = log.read_text()
    assert "[INPUT_AUTH_FILE_UNREADABLE]" in text and "Traceback" not in text
