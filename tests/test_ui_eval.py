"""The web UI's training job with a held-out share: the loss chart carries the eval curve beside the training
one, and the run details (one formatter with ``show-run``) show the eval loss and the before/after answers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backpropagate.demo import quickstart_path
from backpropagate.runs.describe import describe
from backpropagate.ui.views import job_markdown, loss_rows, run_text
from backpropagate.ui.workspace import Workspace

FORM = {"preset": "fast", "method": "LoRA", "learning_rate": "", "max_seq_length": 64}


@pytest.mark.slow
def test_training_job_charts_the_eval_loss(tmp_path: Path, tiny_llama: Path) -> None:
    ws = Workspace(tmp_path / "sandbox", default_model=str(tiny_llama))
    rel = ws.save_upload(Path(quickstart_path()))
    ws.start_training(dataset=rel, steps=4, eval_fraction="0.25", model=None, **FORM)
    state = ws.runner.wait(600)
    assert state.status == "completed", state.error
    record = ws.get_run(state.result["run_id"])
    history = record.details["eval_history"]
    assert [s for s, _ in history] == [4]  # eval_steps 50 > 4 steps: at the end
    rows = loss_rows(state)
    assert [r for r in rows if r["series"] == "eval"] == [{"step": 4, "loss": history[0][1], "series": "eval"}]
    assert [r["step"] for r in rows if r["series"] == "train"] == [1, 2, 3, 4]
    assert "step 4/4" in job_markdown(state)  # the status line reads the last training step, not the eval
    text = run_text(record)
    assert text == describe(record) and f"step 4: {history[0][1]:.4f}" in text
    assert "before / after" in text and "before:" in text  # prompts from the held-out rows by default
    rate = next(line for line in text.splitlines() if line.startswith("tokens_per_second"))
    assert re.fullmatch(r"tokens_per_second \d+\.\d", rate), rate  # 742.9, not 742.9197897206385


def test_a_zero_share_is_the_automatic_hold_out(tmp_path: Path, tiny_llama: Path) -> None:
    from backpropagate.errors import BackpropagateError

    ws = Workspace(tmp_path / "sandbox", default_model=str(tiny_llama))
    rel = ws.save_upload(Path(quickstart_path()))
    with pytest.raises(BackpropagateError) as info:
        ws.start_training(dataset=rel, steps=2, eval_fraction="-1", model=None, **FORM)
    assert info.value.code == "INPUT_INVALID_VALUE"
    ws.start_training(dataset=rel, steps=2, eval_fraction=0, model=None, **FORM)
    state = ws.runner.wait(600)
    assert state.status == "completed", state.error
    assert not [r for r in loss_rows(state) if r["series"] == "eval"]  # 8 rows: no automatic hold-out
