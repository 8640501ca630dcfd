"""The web UI in a real browser: Debian's chromium driven by Playwright against `backprop ui` on 127.0.0.1.

Each scenario saves screenshots to tests/screenshots/ (git-ignored) so a person can look at the pages.
The tests run in file order: the export uses the run the training test produced.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; `make test` does it as root)",
                allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[ui]')")

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

pytestmark = pytest.mark.slow
# Every wait is on a state of the page (a text, a value, a visible element), never a sleep, with a limit
# generous enough for a loaded machine: expect()'s own default is 5 s, which page.set_default_timeout does
# not change. The longest jobs (30 training steps, a GGUF export with its parity check) get LONG.
WAIT_MS = 180_000
LONG_MS = 600_000
expect.set_options(timeout=WAIT_MS)

BACKPROP = str(Path(sys.executable).with_name("backprop"))
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--disable-sync"]
PASSWORD = "s3cret-Pw-42"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`backprop ui` in a subprocess, with its own sandbox and the tiny model as the default model."""

    def __init__(self, tmp: Path, model: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.sandbox = tmp / "sandbox"
        self.log = tmp / "server.log"
        env = {**os.environ, "BACKPROPAGATE_UI__OUTPUT_DIR": str(self.sandbox),
               "BACKPROPAGATE_MODEL__NAME": str(model), "GRADIO_ANALYTICS_ENABLED": "False"}
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen([BACKPROP, "ui", "--port", str(self.port), *extra], env=env,
                                     stdout=self._log_file, stderr=subprocess.STDOUT)
        deadline = time.time() + WAIT_MS / 1000
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the UI exited: {self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"the UI did not come up: {self.log.read_text()}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log_file.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("ui-browser"), tiny_llama)
    yield s
    s.close()


@pytest.fixture()
def page(browser: Browser, server: Server) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 1400})
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    pg.goto(server.url)
    expect(pg.locator("#job-status")).to_be_visible()
    yield pg
    context.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def fill(page: Page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} input, #{elem_id} textarea").first.fill(value)


def upload_identity(page: Page, identity_rows: Path) -> None:
    page.locator("#upload input[type=file]").set_input_files(str(identity_rows))
    expect(page.locator("#dataset-status")).to_contain_text("Format:", timeout=WAIT_MS)


def test_an_idle_page_shows_no_stop_button_and_no_empty_log(page: Page, server: Server) -> None:
    """Before any job: no Stop, no empty job log; the server printed our own launch line, not Gradio's banner
    (which tells users to set share=True)."""
    expect(page.locator("#job-status")).to_contain_text("No job has run")
    expect(page.locator("#stop-job")).to_be_hidden()
    expect(page.locator("#job-log")).to_be_hidden()
    shot(page, "idle")
    log = server.log.read_text()
    assert f"backpropagate UI: open http://127.0.0.1:{server.port}" in log and "share=True" not in log, log


def test_upload_shows_format_and_preview(page: Page, server: Server, identity_rows: Path) -> None:
    upload_identity(page, identity_rows)
    expect(page.locator("#dataset-status")).to_contain_text("alpaca")
    expect(page.locator("#dataset-status")).to_contain_text("Rows: 91")
    preview = page.locator("#dataset-preview")
    expect(preview).to_contain_text("<|start_header_id|>assistant<|end_header_id|>")
    expect(preview).to_contain_text("trained")  # the legend and the highlighted assistant tokens
    expect(page.locator("#dataset-report textarea")).to_have_value(re.compile(r"format\s+alpaca"))
    assert (server.sandbox / "uploads" / "identity.json").is_file()
    shot(page, "dataset")


def test_train_30_steps_live_chart_then_in_runs(page: Page, browser: Browser, server: Server) -> None:
    fill(page, "dataset-path", "uploads/identity.json")
    tab(page, "Train")
    fill(page, "train-data", "uploads/identity.json")
    page.get_by_label("fast").first.check()
    fill(page, "train-steps", "30")
    fill(page, "train-seq", "128")
    page.locator("#train-start").click()
    expect(page.locator("#train-status")).to_contain_text("training started")
    expect(page.locator("#train-plan-text textarea")).to_have_value(re.compile("peak"))
    page.locator("#train-start").click()  # a second Start while the first runs
    expect(page.locator("#train-status")).to_contain_text("STATE_RUN_IN_PROGRESS")

    status = page.locator("#job-status")
    expect(status).to_contain_text(re.compile(r"step \d+/30"), timeout=WAIT_MS)
    first = int(re.search(r"step (\d+)/30", status.inner_text()).group(1))  # the page shows live steps
    expect(page.locator("#loss-plot canvas, #loss-plot svg").first).to_be_visible()
    shot(page, "train-live")

    other = browser.new_page()  # another tab sees the same live job (it runs in the server)
    other.set_default_timeout(WAIT_MS)
    other.goto(server.url)
    expect(other.locator("#job-status")).to_contain_text(re.compile(r"step \d+/30|completed"))
    other.close()

    expect(status).to_contain_text(re.compile(r"train \(.*\): completed"), timeout=LONG_MS)
    expect(status).to_contain_text("step 30/30")
    assert 1 <= first <= 30  # on a busy machine the run may finish before the first poll: no speed assumption
    run_id = re.search(r"run id (\w+)", status.inner_text()).group(1)
    shot(page, "train-done")

    tab(page, "Runs")
    page.locator("#runs-refresh").click()
    expect(page.locator("#runs-table")).to_contain_text(run_id[:8])
    expect(page.locator("#runs-table")).to_contain_text("completed")
    fill(page, "runs-id", run_id[:8])
    page.locator("#runs-show").click()
    expect(page.locator("#runs-details textarea")).to_have_value(re.compile(f"run {run_id}"))
    fill(page, "runs-diff-a", run_id[:8])
    fill(page, "runs-diff-b", run_id[:8])
    page.locator("#runs-diff").click()
    expect(page.locator("#runs-diff-text textarea")).to_have_value(re.compile("same dataset: yes"))
    shot(page, "runs")


def test_export_f16_gguf_parity_passes(page: Page, server: Server) -> None:
    tab(page, "Export")
    expect(page.locator("#export-run input")).to_have_value(re.compile(r"\w{8} · completed"))
    quant = page.locator("#export-quant input")
    quant.click()
    page.get_by_role("option", name="f16", exact=True).click()
    expect(quant).to_have_value("f16")
    page.locator("#export-start").click()
    expect(page.locator("#export-status")).to_contain_text("export started")
    parity = page.locator("#export-parity textarea")
    expect(parity).to_have_value(re.compile(r"parity: PASSED \(f16\)"), timeout=LONG_MS)
    expect(parity).to_have_value(re.compile("top-1 agreement"))
    link = page.locator("#export-file a").first
    expect(link).to_have_attribute("href", re.compile(r"model-f16\.gguf$"))
    download = page.request.get(link.get_attribute("href"), timeout=WAIT_MS)
    assert download.ok and download.body()[:4] == b"GGUF"  # the file itself, served from the sandbox
    assert list(server.sandbox.glob("runs/*/gguf/model-f16.gguf"))
    shot(page, "export")


def test_path_traversal_is_refused(page: Page, server: Server) -> None:
    fill(page, "dataset-path", "../../etc/passwd")
    page.locator("#dataset-load").click()
    expect(page.locator("#dataset-status")).to_contain_text("[INPUT_PATH_OUTSIDE_SANDBOX]")
    expect(page.locator("#dataset-status")).to_contain_text("hint:")
    assert "Traceback" not in page.content()
    shot(page, "traversal-path")
    payload = {"name": "../../etc/passwd.json", "mimeType": "application/json",
               "buffer": b'[{"instruction": "hi", "output": "hello"}]'}
    page.locator("#upload input[type=file]").set_input_files(payload)
    expect(page.locator("#dataset-status")).to_contain_text("uploads/passwd.json", timeout=WAIT_MS)
    assert (server.sandbox / "uploads" / "passwd.json").is_file()
    assert not any(p.name == "passwd.json" for p in server.sandbox.parent.iterdir())
    tab(page, "Train")
    fill(page, "train-data", "/etc/passwd")
    page.locator("#train-start").click()
    expect(page.locator("#train-status")).to_contain_text("[INPUT_PATH_OUTSIDE_SANDBOX]")
    shot(page, "traversal-train")


def test_multi_run_page_shows_forgetting(page: Page, server: Server) -> None:
    tab(page, "Multi-run")
    fill(page, "multi-data", "uploads/identity.json")
    page.get_by_label("Runs (one file)").fill("2")
    page.get_by_label("Steps per run").fill("3")
    page.get_by_label("Sequence length").last.fill("128")
    page.locator("#multi-start").click()
    expect(page.locator("#multi-status")).to_contain_text("multi-run started")
    expect(page.locator("#job-status")).to_contain_text(re.compile(r"multi-run \(.*\): completed"), timeout=LONG_MS)
    expect(page.locator("#multi-report textarea")).to_have_value(re.compile("BWT"))
    shot(page, "multi-run")


def test_auth_requires_login_and_refuses_a_wrong_password(browser: Browser, tmp_path: Path, tiny_llama: Path) -> None:
    server = Server(tmp_path, tiny_llama, "--auth", f"alice:{PASSWORD}")
    try:
        context = browser.new_context(viewport={"width": 1000, "height": 800})
        pg = context.new_page()
        pg.set_default_timeout(WAIT_MS)
        pg.goto(server.url)
        expect(pg.locator("#job-status")).to_have_count(0)
        pg.get_by_label("username").fill("alice")
        pg.get_by_label("password").fill("wrong-password")
        pg.get_by_role("button", name="Login").click()
        expect(pg.get_by_text(re.compile("incorrect credentials", re.I))).to_be_visible()
        expect(pg.locator("#job-status")).to_have_count(0)
        shot(pg, "login-refused")
        pg.get_by_label("username").fill("alice")  # the login form clears it after a failure
        pg.get_by_label("password").fill(PASSWORD)
        pg.get_by_role("button", name="Login").click()
        expect(pg.locator("#job-status")).to_be_visible(timeout=WAIT_MS)
        shot(pg, "login-ok")
        context.close()
    finally:
        server.close()
    log = server.log.read_text()
    assert PASSWORD not in log and "auth_on_command_line" in log  # --auth works, with a word about `ps`


def test_stop_shows_while_a_job_runs_and_stops_it(page: Page, server: Server) -> None:
    """Last in the file (the other tests use completed jobs): a long run shows Stop, which stops it after a
    step; then Stop is gone and the job log stays."""
    tab(page, "Train")
    fill(page, "train-data", "uploads/identity.json")
    fill(page, "train-steps", "5000")
    fill(page, "train-seq", "64")
    page.locator("#train-start").click()
    expect(page.locator("#train-status")).to_contain_text("training started")
    stop = page.locator("#stop-job")
    expect(stop).to_be_visible()  # the run is far from done: it waits for Stop
    expect(page.locator("#job-status")).to_contain_text(re.compile(r"step \d+/5000"))
    shot(page, "train-running-stop")
    stop.click()
    expect(page.locator("#job-status")).to_contain_text(re.compile(r"train \(.*\): (stopped|interrupted)"),
                                                        timeout=LONG_MS)
    expect(stop).to_be_hidden()
    expect(page.locator("#job-log")).to_be_visible()
    shot(page, "train-stopped")
