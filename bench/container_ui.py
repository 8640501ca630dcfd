"""The web UI's container end to end: build, `compose up`, healthy, log in, write a run, `down`, volume kept.

Builds the image from the repository's Dockerfile and compose.yaml (host networking only), starts it under
its own compose project with throwaway credentials from an env file, waits for Docker's health check,
logs in over 127.0.0.1 (a wrong password must be refused, the right one must open the app), writes a run
record into the data volume with `backprop demo` inside the container, then `compose down` and checks that
the volume and the run survive (a second `up` lists the run). Not part of `make test`; needs Docker and
Compose (`docker compose` or the older `docker-compose`) and skips, saying why, where they are missing.

    flock /tmp/backprop-heavy.lock .venv/bin/python bench/container_ui.py [--no-cache] [--keep]

Where no image registry is reachable, the base image is made locally first with docker/make-base-image.sh
(as root). A CPU PyTorch wheel found in pip's find-links (or --torch-wheels DIR) is served to the build
over 127.0.0.1, so the build needs no PyTorch index. Figures go to bench/out/container_ui.json.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.cookiejar
import http.server
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "backprop-bench"
IMAGE = "backpropagate-ui:latest"
DEFAULT_BASE = "debian:bookworm-slim"
DATA_DIR = "/home/backprop/.backpropagate"
SKIPPED = 0  # exit status of a skip: nothing was wrong with the project


class Failure(Exception):
    pass


def log(message: str) -> None:
    print(f"[container_ui] {message}", flush=True)


def run(cmd: list[str], *, check: bool = True, capture: bool = True, env: dict[str, str] | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=ROOT, env=env, text=True, timeout=timeout,
                            stdout=subprocess.PIPE if capture else None,
                            stderr=subprocess.STDOUT if capture else None)
    if check and result.returncode != 0:
        tail = (result.stdout or "")[-3000:]
        raise Failure(f"{' '.join(cmd)} exited {result.returncode}\n{tail}")
    return result


def compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) if present, else the standalone `docker-compose` (v1)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose") and subprocess.run(["docker-compose", "version"],
                                                         capture_output=True).returncode == 0:
        return ["docker-compose"]
    return None


def skip_reason() -> str | None:
    if not shutil.which("docker"):
        return "no docker command on PATH (Debian: apt-get install docker.io)"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or [""])[-1]
        return f"the Docker daemon does not answer (start dockerd): {last}"
    if compose_command() is None:
        return "no Compose: neither `docker compose` nor `docker-compose` (Debian: apt-get install docker-compose)"
    return None


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_torch_wheels(explicit: str | None) -> Path | None:
    """A folder holding a CPU torch wheel: --torch-wheels, else one of pip's configured find-links folders."""
    candidates = [explicit] if explicit else []
    if not explicit:
        listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
        for line in listed.stdout.splitlines():
            key, _, value = line.partition("=")
            if key.endswith("find-links"):
                candidates += value.strip().strip("'\"").split()
        candidates += os.environ.get("PIP_FIND_LINKS", "").split()
    for folder in candidates:
        path = Path(folder.removeprefix("file://"))
        if path.is_dir() and any(path.glob("torch-*+cpu-*.whl")):
            return path
    return None


@contextlib.contextmanager
def serve_folder(folder: Path, port: int):
    """Serve ``folder`` on 127.0.0.1 (the build runs on the host network, so pip can --find-links it).

    The URL is part of a build argument, so the same port on every run keeps Docker's layer cache valid.
    """
    handler = functools.partial(QuietHandler, directory=str(folder))
    if port_in_use(port):
        log(f"port {port} is in use: serving the wheels on another one (the torch layer will rebuild)")
        port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def image_exists(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


def container_id(compose: list[str], env: dict[str, str]) -> str:
    cid = run([*compose, "-p", PROJECT, "ps", "-q", "ui"], env=env).stdout.strip()
    if not cid:
        raise Failure("compose started no `ui` container")
    return cid.splitlines()[-1]


def wait_healthy(cid: str, limit: float) -> float:
    """Seconds from now until Docker reports the container healthy; fails on unhealthy or exit."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        state = json.loads(run(["docker", "inspect", "-f", "{{json .State}}", cid]).stdout)
        health = (state.get("Health") or {}).get("Status")
        if health == "healthy":
            return time.monotonic() - start
        if health == "unhealthy" or state.get("Status") in {"exited", "dead"} or state.get("Restarting"):
            logs = run(["docker", "logs", "--tail", "40", cid], check=False).stdout
            raise Failure(f"container is {state.get('Status')} / {health}:\n{logs}")
        time.sleep(1)
    raise Failure(f"not healthy within {limit:.0f} s")


def http_call(opener: urllib.request.OpenerDirector, url: str, data: dict[str, str] | None = None
              ) -> tuple[int, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with opener.open(urllib.request.Request(url, data=body), timeout=30) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def check_login(port: int, user: str, password: str) -> dict[str, object]:
    """Gradio's login over loopback: the page loads, the app's config is locked until a right login."""
    base = f"http://127.0.0.1:{port}"
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    result: dict[str, object] = {}
    status, _ = http_call(opener, f"{base}/")
    result["page_status"] = status
    status, _ = http_call(opener, f"{base}/config")
    result["config_before_login"] = status
    status, body = http_call(opener, f"{base}/login", {"username": user, "password": password + "-wrong"})
    result["wrong_password"] = status
    if status == 200 or "Incorrect" not in body:
        raise Failure(f"a wrong password was not refused: {status} {body[:200]}")
    status, _ = http_call(opener, f"{base}/config")
    if status == 200:
        raise Failure("the app's config is readable after a failed login")
    status, body = http_call(opener, f"{base}/login", {"username": user, "password": password})
    result["right_password"] = status
    if status != 200 or '"success":true' not in body.replace(" ", ""):
        raise Failure(f"the right password was refused: {status} {body[:200]}")
    status, body = http_call(opener, f"{base}/config")
    result["config_after_login"] = status
    if status != 200:
        raise Failure(f"the app's config is locked after a right login: {status} {body[:200]}")
    config = json.loads(body)
    result["app_title"] = config.get("title")
    result["app_components"] = len(config.get("components", []))
    if config.get("title") != "backpropagate":
        raise Failure(f"unexpected app after login: title {config.get('title')!r}")
    if result["page_status"] != 200 or result["config_before_login"] not in (401, 403):
        raise Failure(f"unexpected statuses before login: {result}")
    return result


def check_no_password_in_command(cid: str, password: str) -> None:
    inspected = run(["docker", "inspect", "-f", "{{json .Path}} {{json .Args}} {{json .Config.Cmd}}", cid]).stdout
    processes = run(["docker", "top", cid], check=False).stdout
    if password in inspected or password in processes:
        raise Failure("the UI password is visible in the container's command line")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=7860, help="host port the UI serves on (host network)")
    parser.add_argument("--no-cache", action="store_true", help="build from scratch (a cold build)")
    parser.add_argument("--skip-build", action="store_true", help=f"use the existing {IMAGE}")
    parser.add_argument("--torch-wheels", help="a folder with a CPU torch wheel to build with")
    parser.add_argument("--wheels-port", type=int, default=17860, help="127.0.0.1 port that serves it")
    parser.add_argument("--demo-steps", type=int, default=10, help="steps of the in-container demo run (0: none)")
    parser.add_argument("--keep", action="store_true", help="keep the bench project's volumes at the end")
    parser.add_argument("--health-limit", type=float, default=600.0, help="seconds to wait for healthy")
    args = parser.parse_args()

    reason = skip_reason()
    if reason:
        print(f"SKIPPED: {reason}")
        return SKIPPED
    compose = compose_command()
    assert compose is not None
    if port_in_use(args.port):
        print(f"FAILED: port {args.port} on 127.0.0.1 is in use; free it or pass --port", file=sys.stderr)
        return 1

    results: dict[str, object] = {"compose": " ".join(compose),
                                  "docker": run(["docker", "version", "-f", "{{.Server.Version}}"]).stdout.strip()}
    base = os.environ.get("BASE_IMAGE", DEFAULT_BASE)
    env = dict(os.environ, BACKPROP_UI_PORT=str(args.port))
    workdir = Path(tempfile.mkdtemp(prefix="backprop-container-"))
    user, password = "bench", secrets.token_urlsafe(18)
    env_file = workdir / "ui.env"
    env_file.write_text(f"BACKPROPAGATE_UI__AUTH={user}:{password}\n")
    env_file.chmod(0o600)
    env["BACKPROP_UI_ENV_FILE"] = str(env_file)
    down = [*compose, "-p", PROJECT, "down"]
    volume = f"{PROJECT}_data"
    try:
        if not image_exists(base):
            if base != DEFAULT_BASE:
                raise Failure(f"base image {base} is missing")
            log(f"making the base image {base} with docker/make-base-image.sh")
            start = time.monotonic()
            run(["bash", "docker/make-base-image.sh", base], capture=False)
            results["base_image_seconds"] = round(time.monotonic() - start, 1)
        results["base_image"] = base
        results["base_image_bytes"] = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", base]).stdout)

        if not args.skip_build:
            wheels = find_torch_wheels(args.torch_wheels)
            with serve_folder(wheels, args.wheels_port) if wheels else contextlib.nullcontext() as url:
                if url and "PIP_TORCH_ARGS" not in os.environ:
                    env["PIP_TORCH_ARGS"] = f"--find-links {url}"
                    log(f"serving the CPU torch wheel from {wheels} at {url}")
                log(f"building {IMAGE} ({'cold, --no-cache' if args.no_cache else 'with the layer cache'})")
                start = time.monotonic()
                run([*compose, "-p", PROJECT, "build", *(["--no-cache"] if args.no_cache else [])],
                    env=env, capture=False)
                results["build_seconds"] = round(time.monotonic() - start, 1)
                results["build_cache"] = not args.no_cache
        results["image_bytes"] = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE]).stdout)
        results["torch"] = run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", IMAGE,
                                "-c", "import torch; print(torch.__version__)"]).stdout.strip()
        whoami = run(["docker", "run", "--rm", "--network", "none", IMAGE, "id", "-un"]).stdout.strip()
        results["user"] = whoami
        if whoami == "root":
            raise Failure("the image runs as root")

        run(down + ["--volumes"], env=env, check=False)  # leftovers of an earlier, interrupted run
        log("compose up -d")
        start = time.monotonic()
        run([*compose, "-p", PROJECT, "up", "-d", "--no-build"], env=env)
        cid = container_id(compose, env)
        network = run(["docker", "inspect", "-f", "{{.HostConfig.NetworkMode}}", cid]).stdout.strip()
        if network != "host":
            raise Failure(f"the container's network mode is {network!r}, not host")
        wait_healthy(cid, args.health_limit)
        results["seconds_up_to_healthy"] = round(time.monotonic() - start, 1)
        log(f"healthy {results['seconds_up_to_healthy']} s after `up -d`")
        check_no_password_in_command(cid, password)
        results["login"] = check_login(args.port, user, password)
        log(f"login: {results['login']}")

        run_id = None
        if args.demo_steps:
            log(f"backprop demo --steps {args.demo_steps} inside the container (writes a run to the volume)")
            start = time.monotonic()
            demo = run([*compose, "-p", PROJECT, "exec", "-T", "ui", "backprop", "demo", "--steps",
                        str(args.demo_steps), "-o", f"{DATA_DIR}/ui-outputs/bench-demo"], env=env)
            results["demo_seconds"] = round(time.monotonic() - start, 1)
            run_id = next((line.split(":", 1)[1].strip() for line in demo.stdout.splitlines()
                           if line.startswith("run_id:")), None)
            if not run_id:
                raise Failure(f"the demo printed no run_id:\n{demo.stdout[-2000:]}")
            results["demo_run_id"] = run_id
            results["demo_gguf"] = "llama.cpp:" in demo.stdout

        log("compose down (volumes kept)")
        run(down, env=env)
        if run(["docker", "volume", "inspect", volume], check=False).returncode != 0:
            raise Failure(f"volume {volume} is gone after `compose down`")
        listing = run(["docker", "run", "--rm", "--network", "none", "-v", f"{volume}:/data:ro", IMAGE,
                       "ls", "-A", "/data"]).stdout.split()
        results["volume_after_down"] = listing
        if "ui-outputs" not in listing or (run_id and "index.db" not in listing):
            raise Failure(f"the volume lacks the data folder's content after down: {listing}")

        log("compose up -d again: the run must still be listed")
        start = time.monotonic()
        run([*compose, "-p", PROJECT, "up", "-d", "--no-build"], env=env)
        cid = container_id(compose, env)
        wait_healthy(cid, args.health_limit)
        results["seconds_up_to_healthy_warm"] = round(time.monotonic() - start, 1)
        if run_id:
            runs = run([*compose, "-p", PROJECT, "exec", "-T", "ui", "backprop", "list-runs"], env=env).stdout
            results["run_survives_down"] = run_id[:8] in runs
            if not results["run_survives_down"]:
                raise Failure(f"run {run_id} is not listed after down/up:\n{runs}")
        run(down, env=env)
        results["ok"] = True
    except (Failure, subprocess.TimeoutExpired) as exc:
        results["ok"] = False
        results["error"] = str(exc)
        print(f"FAILED: {exc}", file=sys.stderr)
        with contextlib.suppress(Exception):
            cid = container_id(compose, env)
            print(run(["docker", "logs", "--tail", "60", cid], check=False).stdout, file=sys.stderr)
        run(down, env=env, check=False)
    finally:
        if not args.keep:
            run(down + ["--volumes"], env=env, check=False)
        shutil.rmtree(workdir, ignore_errors=True)

    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "container_ui.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0 if results.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
