"""Held-out evaluation on a real tiny model: the loss it reports, early stopping with the best adapter,
held-out rows kept out of training, coded refusals before the model loads, the history and resume."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from backpropagate import BackpropagateError, Trainer, runs
from backpropagate.data import load_examples, tokenize_examples
from backpropagate.data.rowset import example_text, normalize_text
from backpropagate.data.templates import IGNORE_INDEX
from backpropagate.demo import quickstart_path
from backpropagate.training.callbacks import TrainingCallback
from backpropagate.training.evaluation import hold_out
from backpropagate.training.stop import RunInterrupted
from support.faults import faults

SMALL = {"lora_r": 4, "lora_alpha": 8, "batch_size": 2, "gradient_accumulation": 1, "max_seq_length": 64,
         "report_to": "none"}
DATA = str(quickstart_path())
BACKPROP = str(Path(sys.executable).with_name("backprop"))


def direct_loss(model: torch.nn.Module, samples: list) -> float:
    """Mean cross-entropy per label token, one sample at a time, without packing."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in samples:
            logits = model(input_ids=torch.tensor([s.input_ids]), use_cache=False).logits[0, :-1].float()
            targets = torch.tensor(s.labels[1:])
            keep = targets != IGNORE_INDEX
            total += float(torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum"))
            count += int(keep.sum())
    return total / count


def held_out_samples(trainer: Trainer, fraction: float, seed: int = 42) -> list:
    split = hold_out(load_examples(DATA), eval_fraction=fraction, seed=seed, require_assistant=True)
    return tokenize_examples(trainer.tokenizer, split.eval_examples, train_on_responses=True)


def key(example: Any) -> str:
    return hashlib.sha256(normalize_text(example_text(example)).encode()).hexdigest()


def test_eval_loss_equals_a_direct_computation_with_the_adapter(tiny_llama: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, dict]] = []
    trainer = Trainer(str(tiny_llama), output_dir=tmp_path, eval_steps=2, **SMALL)
    run = trainer.train(DATA, steps=5, eval_fraction=0.25,
                        callback=TrainingCallback(on_evaluate=lambda step, m: seen.append((step, m))))
    assert [s for s, _ in run.eval_history] == [2, 4, 5]  # every eval_steps, and at the end
    assert [s for s, _ in seen] == [2, 4, 5]
    loss = run.eval_history[-1][1]
    assert seen[-1][1]["perplexity"] == pytest.approx(math.exp(loss))
    assert direct_loss(trainer.model, held_out_samples(trainer, 0.25)) == pytest.approx(loss, abs=1e-5)
    assert run.best_eval_loss == min(v for _, v in run.eval_history) and run.stop_reason is None
    assert run.output_path == run.final_adapter_path and Path(run.best_adapter_path).is_dir()


def test_overfitting_run_stops_early_and_keeps_the_best_adapter(tiny_llama: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    trainer = Trainer(str(tiny_llama), output_dir=tmp_path, eval_steps=1, early_stopping_patience=2,
                      keep_best=True, **{**SMALL, "learning_rate": 0.05, "warmup_ratio": 0.0,
                                         "lr_scheduler": "constant"})
    run = trainer.train(DATA, steps=40, eval_fraction=0.25)
    assert run.stop_reason and "early stopping" in run.stop_reason
    assert run.steps < 40 and run.steps == run.eval_history[-1][0] == len(run.loss_history)
    losses = [v for _, v in run.eval_history]
    assert run.best_eval_loss == min(losses) and all(v >= run.best_eval_loss for v in losses[-2:])
    assert run.output_path == run.best_adapter_path and Path(run.final_adapter_path).name == "lora-last"
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama), torch_dtype=torch.float32)
    saved = PeftModel.from_pretrained(base, run.output_path)
    assert direct_loss(saved, held_out_samples(trainer, 0.25)) == pytest.approx(run.best_eval_loss, abs=1e-5)
    record = runs.get(run.run_id, tmp_path)
    assert record.status == "completed" and record.details["stop_reason"] == run.stop_reason
    assert record.details["best_step"] == run.best_step and record.completed_steps == run.steps


def test_held_out_rows_never_occur_in_the_training_rows(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in Path(DATA).read_text().splitlines()]
    data = tmp_path / "dupes.jsonl"  # rows 0-2 twice: never eligible for the hold-out
    data.write_text("\n".join(json.dumps(r) for r in rows + rows[:3]) + "\n")
    for seed in range(5):
        split = hold_out(load_examples(str(data)), eval_fraction=0.5, seed=seed, require_assistant=True)
        trained = {key(e) for e in split.train.examples}
        assert split.eval_examples and not trained & {key(e) for e in split.eval_examples}
        assert split.duplicates == 6 and all(i >= 3 for i in split.eval_rows)
        assert len(split.train.examples) + len(split.eval_examples) == len(rows) + 3
    separate = hold_out(load_examples(DATA), eval_data=str(data), seed=0, require_assistant=True)
    assert separate.duplicates == len(rows) + 3  # a separate eval set that repeats the training rows: counted


def test_training_batches_hold_no_held_out_row(tiny_llama: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A spy (the real collate, recording) on every micro-batch the loop trains on."""
    from backpropagate.training import engine

    trained: list[int] = []
    real = engine.collate

    def recording(rows: list, pad_token_id: int) -> dict:
        for r in rows:
            trained.extend([*r.input_ids, -1])
        return real(rows, pad_token_id)

    monkeypatch.setattr(engine, "collate", recording)
    trainer = Trainer(str(tiny_llama), output_dir=tmp_path, **SMALL)
    trainer.train(DATA, steps=6, eval_fraction=0.25)
    assert trained
    for sample in held_out_samples(trainer, 0.25):
        ids = sample.input_ids
        assert not any(trained[i:i + len(ids)] == ids for i in range(len(trained) - len(ids) + 1))


def _unloadable_model(tmp_path: Path) -> str:
    """A model folder that exists (so it passes the first checks) but cannot load: a sentinel for "the error
    came before the model loaded"."""
    folder = tmp_path / "unloadable-model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("{}")
    return str(folder)


@pytest.mark.parametrize(("kwargs", "train_kwargs", "code"), [
    ({}, {"eval_data": DATA, "eval_fraction": 0.1}, "INPUT_EVAL_CONFLICT"),
    ({}, {"eval_fraction": 0.0}, "INPUT_INVALID_VALUE"),
    ({}, {"eval_fraction": 0.51}, "INPUT_INVALID_VALUE"),
    ({}, {"eval_fraction": float("nan")}, "INPUT_INVALID_VALUE"),
    ({"early_stopping_patience": 2}, {}, "INPUT_EVAL_MISSING"),
    ({}, {"eval_fraction": 0.1, "curriculum": True}, "INPUT_EVAL_CONFLICT"),
])
def test_bad_evaluation_arguments_are_coded_before_the_model_loads(tmp_path: Path, kwargs: dict,
                                                                   train_kwargs: dict, code: str) -> None:
    with pytest.raises(BackpropagateError) as info:  # loading the model would fail with another code
        Trainer(_unloadable_model(tmp_path), output_dir=tmp_path / "out", **kwargs).train(DATA, steps=1, **train_kwargs)
    assert info.value.code == code and info.value.hint


@pytest.mark.parametrize("eval_steps", [0, -3])
def test_eval_steps_must_be_positive(tmp_path: Path, eval_steps: int) -> None:
    with pytest.raises(BackpropagateError) as info:
        Trainer(str(tmp_path / "no-model"), eval_steps=eval_steps)
    assert info.value.code == "INPUT_INVALID_VALUE"


def test_eval_sets_with_nothing_to_train_or_score_are_coded_before_the_model_loads(tmp_path: Path) -> None:
    one = tmp_path / "one.jsonl"
    one.write_text(Path(DATA).read_text().splitlines()[0] + "\n")
    prompts_only = tmp_path / "prompts.jsonl"
    prompts_only.write_text(json.dumps({"text": "   "}) + "\n")
    trainer = Trainer(_unloadable_model(tmp_path), output_dir=tmp_path / "out", train_on_responses=False)
    with pytest.raises(BackpropagateError) as info:
        trainer.train(str(one), steps=1, eval_fraction=0.5)
    assert info.value.code == "INPUT_EVAL_EMPTY" and "no row" in info.value.message
    with pytest.raises(BackpropagateError) as info:
        trainer.train(DATA, steps=1, eval_data=str(prompts_only))
    assert info.value.code.startswith("INPUT_")


def test_show_run_shows_the_eval_loss(tiny_llama: Path, tmp_path: Path) -> None:
    run = Trainer(str(tiny_llama), output_dir=tmp_path, eval_steps=2, **SMALL).train(
        DATA, steps=4, eval_data=DATA)
    shown = subprocess.run([BACKPROP, "show-run", run.run_id[:8], "--output", str(tmp_path)],
                           capture_output=True, text=True, check=True).stdout
    assert f"eval loss   best {run.best_eval_loss:.4f} at step {run.best_step}" in shown
    assert f"step 4: {run.eval_history[-1][1]:.4f}" in shown
    assert runs.diff(run.run_id, run.run_id, tmp_path).results["best_eval_loss"] == (run.best_eval_loss,) * 2
    exported = json.loads(runs.export("jsonl", output_dir=tmp_path).splitlines()[0])
    assert exported["details"]["eval_history"] == [list(h) for h in run.eval_history]


def test_resume_keeps_the_evaluation_state(tiny_llama: Path, tmp_path: Path) -> None:
    settings = {"eval_steps": 2, "save_steps": 2, "early_stopping_patience": 5, **SMALL}
    reference = Trainer(str(tiny_llama), output_dir=tmp_path / "ref", **settings).train(
        DATA, steps=6, eval_fraction=0.25)

    def boom(where: str, step: int, index: object) -> None:
        if (where, step) == ("micro_batch", 5):
            raise KeyboardInterrupt

    out = tmp_path / "cut"
    with faults(boom), pytest.raises(RunInterrupted):
        Trainer(str(tiny_llama), output_dir=out, **settings).train(DATA, steps=6, eval_fraction=0.25)
    resumed = Trainer(str(tiny_llama), output_dir=out, **settings).train(resume=True)  # the run's own hold-out
    assert resumed.eval_history == reference.eval_history
    assert (resumed.best_eval_loss, resumed.best_step) == (reference.best_eval_loss, reference.best_step)
    for folder in ("lora", "lora-best"):
        from safetensors.torch import load_file

        a = load_file(tmp_path / "ref" / folder / "adapter_model.safetensors")
        b = load_file(out / folder / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tensorboard_events_hold_the_eval_loss(tiny_llama: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = Trainer(str(tiny_llama), output_dir=tmp_path, eval_steps=2,
                  **{**SMALL, "report_to": "tensorboard"}).train(DATA, steps=4, eval_fraction=0.25)
    events = EventAccumulator(str(tmp_path / "tensorboard" / run.run_id))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("eval/loss")] == [
        (s, pytest.approx(v, rel=1e-6)) for s, v in run.eval_history]
    assert [e.step for e in events.Scalars("eval/perplexity")] == [2, 4]


def test_cli_eval_flags_reach_the_checks(tmp_path: Path) -> None:
    done = subprocess.run([BACKPROP, "train", "--data", DATA, "--model", _unloadable_model(tmp_path), "--output",
                           str(tmp_path), "--eval-data", DATA, "--eval-fraction", "0.1"],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "INPUT_EVAL_CONFLICT" in done.stdout + done.stderr
