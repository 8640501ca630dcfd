"""The web UI without a browser: the job runner and the handlers, with real tiny-model training and export."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from backpropagate.errors import BackpropagateError
from backpropagate.ui.jobs import JobRunner, StopRequested
from backpropagate.ui.views import error_markdown, job_markdown, loss_rows
from backpropagate.ui.workspace import Workspace

BACKPROP = str(Path(sys.executable).with_name("backprop"))
FORM = {"preset": "fast", "method": "LoRA", "learning_rate": "", "max_seq_length": 128}
WAIT = 600  # seconds: every wait is on a state, so a loaded machine only makes it slower, never red


def wait_for(ready, what: str) -> None:
    """Poll ``ready()`` until it holds (or fail after WAIT seconds): a wait on the state, not a sleep."""
    deadline = time.monotonic() + WAIT
    while not ready():
        assert time.monotonic() < deadline, f"timed out after {WAIT} s waiting for {what}"
        time.sleep(0.05)


def code_of(fn, *args, **kwargs) -> str:
    with pytest.raises(BackpropagateError) as info:
        fn(*args, **kwargs)
    return info.value.code


@pytest.fixture()
def ws(tmp_path: Path, tiny_llama: Path) -> Workspace:
    return Workspace(tmp_path / "sandbox", default_model=str(tiny_llama))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, identity_rows: Path) -> Workspace:
    """A workspace holding one completed 30-step run on identity.json (trained once for the module)."""
    ws = Workspace(tmp_path_factory.mktemp("ui") / "sandbox", default_model=str(tiny_llama))
    rel = ws.save_upload(identity_rows)
    ws.start_training(dataset=rel, steps=30, model=None, **FORM)
    state = ws.runner.wait(WAIT)
    assert state.status == "completed", state.error
    return ws


def test_runner_runs_one_job_at_a_time() -> None:
    runner = JobRunner()
    release = threading.Event()
    runner.start("train", "first", lambda ctx: release.wait(WAIT) and {"done": True})
    assert runner.busy
    with pytest.raises(BackpropagateError) as info:
        runner.start("export", "second", lambda ctx: None)
    assert info.value.code == "STATE_RUN_IN_PROGRESS" and "already running" in info.value.message
    release.set()
    state = runner.wait(WAIT)
    assert state.status == "completed" and state.result == {"done": True}
    runner.start("export", "third", lambda ctx: None)  # free again
    assert runner.wait(WAIT).status == "completed"


def test_runner_reports_failures_as_codes_and_stops() -> None:
    runner = JobRunner()

    def fail(ctx):
        raise BackpropagateError("INPUT_FILE_NOT_FOUND", "nope.json does not exist", hint="upload it")

    runner.start("train", "bad", fail)
    state = runner.wait(WAIT)
    assert state.status == "failed" and state.error == ("INPUT_FILE_NOT_FOUND", "nope.json does not exist", "upload it")
    assert "[INPUT_FILE_NOT_FOUND]" in job_markdown(state).replace("\\", "") and "Traceback" not in job_markdown(state)

    def loop(ctx):
        while True:
            ctx.check_stop()
            time.sleep(0.01)

    runner.start("train", "endless", loop)
    assert runner.stop() and runner.wait(WAIT).status == "stopped"
    assert not runner.stop()
    runner.start("x", "unexpected", lambda ctx: 1 / 0)
    assert runner.wait(WAIT).error[0] == "RUNTIME_UNEXPECTED"


def test_error_markdown_has_code_message_and_hint() -> None:
    text = error_markdown(BackpropagateError("INPUT_PATH_OUTSIDE_SANDBOX", "'../x' is outside", hint="use a path"))
    assert text.replace("\\", "").startswith("**Error** [INPUT_PATH_OUTSIDE_SANDBOX]: '../x' is outside")
    assert "hint: use a path" in text
    assert "[RUNTIME_UNEXPECTED]" in error_markdown(ValueError("boom")).replace("\\", "")


def test_paths_and_models_stay_in_the_sandbox(ws: Workspace, tmp_path: Path) -> None:
    for bad in ("../../etc/passwd", "/etc/passwd", "uploads/../../../x.json"):
        assert code_of(ws.dataset_path, bad) == "INPUT_PATH_OUTSIDE_SANDBOX"
        assert code_of(ws.inspect_dataset, bad, None) == "INPUT_PATH_OUTSIDE_SANDBOX"
        assert code_of(ws.start_training, dataset=bad, steps=5, model=None, **FORM) == "INPUT_PATH_OUTSIDE_SANDBOX"
    assert code_of(ws.dataset_path, "missing.jsonl") == "INPUT_FILE_NOT_FOUND"
    assert code_of(ws.model_name, "/etc") == "INPUT_PATH_OUTSIDE_SANDBOX"
    assert code_of(ws.model_name, "../../usr/lib") == "INPUT_PATH_OUTSIDE_SANDBOX"
    assert ws.model_name("qwen2.5-7b") == "qwen2.5-7b" and ws.model_name("org/some-model") == "org/some-model"
    assert code_of(Workspace, "/etc") == "INPUT_SANDBOX_FORBIDDEN"
    assert not ws.runner.busy


def test_uploads_are_sanitized_and_size_limited(ws: Workspace, tmp_path: Path, identity_rows: Path) -> None:
    evil = tmp_path / "evil.json"
    evil.write_bytes(identity_rows.read_bytes())
    rel = ws.save_upload(evil, "../../etc/passwd.json")
    assert rel == "uploads/passwd.json" and (ws.root / rel).is_file()
    assert ws.save_upload(evil, "../../etc/passwd.json") == rel  # same content: the same file
    assert code_of(ws.save_upload, evil, "notes.sh") == "INPUT_UNSUPPORTED_FILE_TYPE"
    small = Workspace(ws.root, default_model=ws.default_model, max_upload_bytes=100)
    assert code_of(small.save_upload, evil, "x.json") == "INPUT_UPLOAD_TOO_LARGE"
    assert ws.list_files() == ["uploads/passwd.json"]


def test_dataset_view_format_rows_preview_and_report(ws: Workspace, identity_rows: Path) -> None:
    rel = ws.save_upload(identity_rows)
    view = ws.inspect_dataset(rel, None)
    rows = len(json.loads(identity_rows.read_text()))
    assert view["format"] == "alpaca" and view["rows"] == rows
    trained = "".join(text for text, label in view["preview"] if label == "trained")
    untrained = "".join(text for text, label in view["preview"] if label is None)
    first = json.loads(identity_rows.read_text())[0]
    assert first["output"].strip()[:20] in trained and first["instruction"][:20] in untrained
    assert 0 < view["trained_tokens"] < view["preview_tokens"]
    assert "alpaca" in view["report"] and f"rows        {rows}" in view["report"]


def test_form_errors_are_coded_before_anything_runs(ws: Workspace, identity_rows: Path) -> None:
    rel = ws.save_upload(identity_rows)
    assert code_of(ws.start_training, dataset=rel, steps=0, model=None, **FORM) == "INPUT_INVALID_VALUE"
    assert code_of(ws.start_training, dataset=rel, steps=5, model=None,
                   **{**FORM, "learning_rate": "fast"}) == "INPUT_INVALID_VALUE"
    assert code_of(ws.start_training, dataset=rel, steps=5, model=None, **{**FORM, "method": "RLHF"}) \
        == "INPUT_INVALID_VALUE"
    plan = ws.plan_text(model=None, **FORM)
    assert "peak (estimate)" in plan and "GGUF export: supported" in plan  # the UI says it before training


@pytest.mark.slow
def test_training_job_history_details_and_diff(trained: Workspace) -> None:
    ws = trained
    state = ws.runner.snapshot()
    steps = [m["step"] for m in state.metrics]
    assert steps == list(range(1, 31)) and all(m["tokens_per_second"] > 0 for m in state.metrics)
    assert len(loss_rows(state)) == 30 and state.eta_seconds() == 0
    records = ws.list_runs()
    assert len(records) == 1 and records[0].status == "completed" and records[0].run_id == state.result["run_id"]
    assert ws.root in Path(records[0].output_dir).parents
    from backpropagate.ui.views import diff_text, run_text

    assert "completed" in run_text(ws.get_run(records[0].run_id[:6]))
    plot = ws.plot({"a": records[0].loss_history}, "test")
    assert plot and Path(plot).is_file() and ws.root in Path(plot).parents
    from backpropagate import runs

    assert "same dataset: yes" in diff_text(runs.diff(records[0].run_id, records[0].run_id, records[0].output_dir))
    assert code_of(ws.get_run, "zzzz") == "STATE_RUN_NOT_FOUND"


@pytest.mark.slow
def test_export_f16_gguf_passes_parity(trained: Workspace) -> None:
    ws = trained
    run_id = ws.list_runs()[0].run_id
    ws.start_export(run_id, format="gguf", quantization="f16")
    state = ws.runner.wait(WAIT)
    assert state.status == "completed", state.error
    assert state.result["passed"] is True and "parity: PASSED (f16)" in state.result["parity"]
    download = Path(state.result["download"])
    assert download.is_file() and download.suffix == ".gguf" and ws.root in download.parents
    assert ws.get_run(run_id).details["exports"][0]["parity_passed"] is True
    ws.start_export(run_id, format="gguf", quantization="f16")  # exists already, no overwrite
    assert ws.runner.wait(WAIT).error[0] == "STATE_OUTPUT_EXISTS"


@pytest.mark.slow
def test_stop_checkpoints_and_resume_finishes(ws: Workspace, identity_rows: Path) -> None:
    rel = ws.save_upload(identity_rows)
    ws.start_training(dataset=rel, steps=200, model=None, **FORM)
    with pytest.raises(BackpropagateError) as info:
        ws.start_training(dataset=rel, steps=5, model=None, **FORM)
    assert info.value.code == "STATE_RUN_IN_PROGRESS"
    wait_for(lambda: len(ws.runner.snapshot().metrics) >= 3, "3 logged steps")
    assert ws.runner.stop()
    state = ws.runner.wait(WAIT)
    assert state.status == "stopped", state.error
    record = ws.get_run(state.result["run_id"])
    assert record.status == "interrupted" and record.checkpoints and record.completed_steps < 200
    assert code_of(ws.start_export, record.run_id) == "STATE_NOT_TRAINED"
    stopped_at = record.completed_steps
    ws.start_resume(record.run_id)
    wait_for(lambda: ws.runner.snapshot().metrics or not ws.runner.busy, "the resumed run's first step")
    ws.runner.stop()  # resume works and stops again; the run stays resumable
    state = ws.runner.wait(WAIT)
    assert state.status in {"stopped", "completed"}, state.error
    assert state.metrics and state.metrics[0]["step"] == stopped_at + 1


@pytest.mark.slow
def test_multi_run_job_reports_forgetting(ws: Workspace, identity_rows: Path) -> None:
    rel = ws.save_upload(identity_rows)
    ws.start_multi_run(datasets=rel, num_runs=2, steps_per_run=3, samples_per_run=None, model=None,
                       preset="fast", max_seq_length=128)
    state = ws.runner.wait(WAIT)
    assert state.status == "completed", state.error
    assert {m["run"] for m in state.metrics} == {1, 2}
    assert {r["series"] for r in loss_rows(state)} == {"run 1", "run 2"}
    assert len([r for r in loss_rows(state) if r["loss"] is not None]) == 6
    state.metrics = state.metrics[:2]  # mid run 1: run 2 is already named, for the chart's legend
    assert [r["loss"] is None for r in loss_rows(state)] == [False, False, True]
    assert "BWT" in state.result["forgetting"] or "bwt" in state.result["forgetting"].lower()
    assert "multi_run" in ws.get_run(state.result["run_id"]).config


def test_cli_refuses_exposure_without_auth_before_gradio(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "BACKPROPAGATE_UI__OUTPUT_DIR": str(tmp_path / "ui")}
    for args in (["--share"], ["--host", "0.0.0.0"]):
        done = subprocess.run([BACKPROP, "ui", *args], env=env, capture_output=True,
                              text=True, timeout=WAIT)
        assert done.returncode == 1 and "[INPUT_AUTH_REQUIRED]" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([BACKPROP, "ui", "--help"], env=env, capture_output=True,
                          text=True, timeout=WAIT)
    assert done.returncode == 0 and "--auth" in done.stdout and "--share" in done.stdout


def test_missing_gradio_is_a_coded_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from backpropagate.ui import require_gradio

    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(BackpropagateError) as info:
        require_gradio()
    assert info.value.code == "DEP_EXTRA_MISSING" and 'backpropagate[ui]' in info.value.hint


def test_stop_requested_is_a_keyboard_interrupt() -> None:
    assert issubclass(StopRequested, KeyboardInterrupt)  # so runs end "interrupted", i.e. resumable


def test_the_model_box_starts_with_the_largest_preset_that_fits_and_the_plan_names_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a 4 GB card (what-if hardware) the 7B and the 3-4B presets do not fit; the form starts with the
    largest that does, and a plan that does not fit names it. A model the user set stays the default."""
    from dataclasses import replace

    from backpropagate import Trainer
    from backpropagate import trainer as trainer_module
    from backpropagate.hardware import HardwareFacts
    from backpropagate.ui import workspace as workspace_module

    card = replace(HardwareFacts.gpu(4), bitsandbytes=True)
    monkeypatch.setattr(workspace_module, "probe_hardware", lambda: card)
    monkeypatch.setattr(trainer_module, "probe_hardware", lambda: card)
    ws = Workspace(tmp_path / "sandbox")
    assert ws.default_model == "llama-3.2-3b"
    assert Trainer("llama-3.2-3b").plan(vram_gb=4).fits and not Trainer("qwen3.5-4b").plan(vram_gb=4).fits
    plan = ws.plan_text(model="qwen2.5-7b", **{**FORM, "preset": "quality", "max_seq_length": 4096})
    assert "does NOT fit" in plan and "the largest preset that fits this machine: llama-3.2-3b" in plan
    monkeypatch.setenv("BACKPROPAGATE_MODEL__NAME", "qwen2.5-7b")
    assert Workspace(tmp_path / "sandbox").default_model == "Qwen/Qwen2.5-7B-Instruct"  # as the settings name it
