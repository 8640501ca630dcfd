"""Progress where the user is: step lines in a log file, a bar in a notebook, the history between checkpoints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from backpropagate import runs
from backpropagate.config import resolve_settings
from backpropagate.demo import quickstart_path
from backpropagate.training.progress import RunProgress
from process_helpers import BACKPROP, wait_for

pytestmark = pytest.mark.slow

QUICK_START = """
from backpropagate import Trainer
trainer = Trainer({model!r}, lora_r=4, max_seq_length=64, output_dir={out!r}, report_to="none")
trainer.train({data!r}, steps={steps})
"""


def test_the_python_quick_start_logs_the_loss_to_a_file(tiny_llama: Path, tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    script = QUICK_START.format(model=str(tiny_llama), out=str(tmp_path / "out"), data=str(quickstart_path()),
                                steps=20)
    with log.open("w") as sink:
        done = subprocess.run([sys.executable, "-c", script], stdout=sink, stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    before_end = text.split("run_completed")[0]
    steps = [line for line in before_end.splitlines() if " step " in line and "loss=" in line]
    assert len(steps) >= 5, text[-3000:]  # a tenth of 20 steps: a line every 2 steps
    assert "of=20" in steps[-1] and "tokens_per_second=" in steps[-1] and "eta_seconds=" in steps[-1]


def test_list_runs_shows_steps_before_the_first_checkpoint(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen([BACKPROP, "train", "--model", str(tiny_llama), "--data", str(quickstart_path()),
                             "--steps", "60", "--save-steps", "0", "--logging-steps", "1", "--lora-r", "4",
                             "--max-seq-length", "64", "--output", str(out), "--report-to", "none"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        running = wait_for(lambda: next((r for r in runs.list(out) if r.status == "running"
                                         and r.completed_steps > 0), None), "steps in the history", proc)
        assert not running.checkpoints and running.details.get("last_loss") is not None
        shown = subprocess.run([BACKPROP, "list-runs", "--output", str(out)], capture_output=True, text=True,
                               timeout=120)
        assert f"{running.run_id[:8]}" in shown.stdout and "running" in shown.stdout
    finally:
        proc.kill()
        proc.wait(timeout=60)


def test_a_notebook_shows_a_live_bar(tiny_llama: Path, tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    code = QUICK_START.format(model=str(tiny_llama), out=str(tmp_path / "out"), data=str(quickstart_path()),
                              steps=3)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
    outputs = notebook.cells[0].outputs
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert widgets or ("3/3" in text and "loss=" in text), text[-2000:]
    assert " step " not in text  # the bar, not the log lines


def test_log_lines_name_the_run_of_a_campaign_and_feed_the_history() -> None:
    recorded: list[tuple[int, float]] = []
    lines: list[dict[str, object]] = []

    class Log:
        def info(self, event: str, **fields: object) -> None:
            lines.append({"event": event, **fields})

    training = resolve_settings(progress=False, logging_steps=2).training
    progress = RunProgress(training, Log(), record=lambda step, loss: recorded.append((step, loss)))
    for step in range(1, 6):
        progress.on_log({"step": step, "steps_total": 5, "loss": 1.0 / step, "run": 2, "runs": 3,
                         "tokens_per_second": 100.0, "elapsed_seconds": float(step)})
    assert [line["step"] for line in lines] == [2, 4, 5] and lines[0]["run"] == "run 2/3"
    assert recorded == [(2, 0.5), (4, 0.25), (5, 0.2)]
