"""``backpropagate.evaluate`` and ``backprop eval`` on a real tiny model: the run's own eval loss reproduced
from the saved adapter, the tuned adapter below its base on the rows it learned, coded errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backpropagate import BackpropagateError, Trainer, evaluate
from backpropagate.demo import quickstart_path

BACKPROP = str(Path(sys.executable).with_name("backprop"))
SMALL = {"lora_r": 4, "lora_alpha": 8, "batch_size": 2, "gradient_accumulation": 1, "max_seq_length": 64,
         "report_to": "none", "learning_rate": 0.01, "warmup_ratio": 0.0, "lr_scheduler": "constant"}


@pytest.fixture(scope="module")
def tuned(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, list]:
    """An adapter trained on 6 quickstart rows and evaluated on the other 2 while it trained."""
    folder = tmp_path_factory.mktemp("eval-command")
    rows = Path(quickstart_path()).read_text().splitlines()
    train, held = folder / "train.jsonl", folder / "held.jsonl"
    train.write_text("\n".join(rows[:6]) + "\n")
    held.write_text("\n".join(rows[6:]) + "\n")
    run = Trainer(str(tiny_llama), output_dir=folder / "out", eval_steps=4, **SMALL).train(
        str(train), steps=8, eval_data=str(held))
    assert run.output_path == run.final_adapter_path
    return Path(run.output_path), train, held, run.eval_history


def test_evaluate_reproduces_the_runs_eval_loss_from_the_saved_adapter(tuned: tuple) -> None:
    adapter, _, held, history = tuned
    report = evaluate(adapter, str(held))
    assert report.rows == 2 and report.label_tokens > 0
    assert report.score("adapter").loss == pytest.approx(history[-1][1], abs=1e-5)
    assert [s.name for s in report.scores] == ["adapter", "base"]


def test_tuned_adapter_scores_lower_than_its_base_on_what_it_learned(tuned: tuple) -> None:
    adapter, train, _, _ = tuned
    out = subprocess.run([BACKPROP, "eval", str(adapter), "--data", str(train), "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    scores = {s["name"]: s for s in report["scores"]}
    assert scores["adapter"]["loss"] < scores["base"]["loss"] - 0.1
    assert report["rows"] == 6 and report["base_model"]
    table = subprocess.run([BACKPROP, "eval", str(adapter), "--data", str(train)], capture_output=True,
                           text=True, timeout=600)
    assert table.returncode == 0 and "adapter" in table.stdout and "base" in table.stdout
    assert "(lower)" in table.stdout and "perplexity" in table.stdout


def test_adapter_only_and_a_full_model_folder(tuned: tuple, tiny_llama: Path) -> None:
    adapter, _, held, _ = tuned
    assert [s.name for s in evaluate(adapter, str(held), include_base=False).scores] == ["adapter"]
    whole = evaluate(tiny_llama, str(held))
    base = evaluate(adapter, str(held)).score("base")
    assert [s.name for s in whole.scores] == ["model"] and whole.scores[0].loss == pytest.approx(base.loss, abs=1e-5)


def test_bad_inputs_are_coded_errors(tuned: tuple, tmp_path: Path) -> None:
    adapter, train, _, _ = tuned
    with pytest.raises(BackpropagateError) as info:
        evaluate(tmp_path / "missing", str(train))
    assert info.value.code == "INPUT_NOT_A_MODEL_DIR"
    with pytest.raises(BackpropagateError) as info:
        evaluate(adapter, str(tmp_path / "missing.jsonl"))
    assert info.value.code == "INPUT_FILE_NOT_FOUND"
    with pytest.raises(BackpropagateError) as info:
        evaluate(adapter, str(train), base=tmp_path)
    assert info.value.code == "DEP_BASE_MODEL_NOT_FOUND"
    out = subprocess.run([BACKPROP, "eval", str(adapter), "--data", str(train), "--batch-size", "0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and out.stderr.startswith("[INPUT_INVALID_VALUE]") and "Traceback" not in out.stderr
