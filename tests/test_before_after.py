"""Before and after (issue 19 part 4) on a real tiny model: chat with the base model at any time, and the
greedy answers of the base and the tuned model to ``sample_prompts``, kept in the run and its history."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from backpropagate import BackpropagateError, Trainer
from backpropagate.demo import quickstart_path
from process_helpers import BACKPROP

# Settings under which the tiny model learns the quickstart answers within a few dozen steps.
LEARNS = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "learning_rate": 3e-3, "batch_size": 1,
          "gradient_accumulation": 1, "max_seq_length": 256, "save_steps": 0, "seed": 0}
STEPS = 30


def _question() -> str:
    first = json.loads(quickstart_path().read_text(encoding="utf-8").splitlines()[0])
    return str(first["conversations"][0]["value"])


def _base_answer(model_dir: Path, prompt: str, max_new_tokens: int) -> str:
    """The base model's greedy reply, straight from transformers: same tokenizer, same chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backpropagate.data.templates import end_of_turn_tokens

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=[tok.convert_tokens_to_ids(t) for t in
                                                            end_of_turn_tokens(tok)],
                             pad_token_id=tok.pad_token_id)
    return str(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())


@pytest.fixture(scope="module")
def small_llama() -> Path:
    """The demo's model: unlike the tiny one (which answers only newlines), its base answers are not blank."""
    from backpropagate.testing import build_tiny_model

    return build_tiny_model("llama", size="small", seed=0)


@pytest.fixture(scope="module")
def tuned(small_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One trainer asked before training, then trained with a sample prompt the data teaches."""
    out = tmp_path_factory.mktemp("tuned")
    trainer = Trainer(str(small_llama), output_dir=out, **LEARNS)
    question = _question()
    before_training = trainer.chat(question, max_new_tokens=32)
    run = trainer.train(str(quickstart_path()), steps=STEPS, sample_prompts=[question])
    return {"trainer": trainer, "run": run, "question": question, "before_training": before_training, "out": out}


def test_chat_before_training_is_the_base_model(small_llama: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    trainer = Trainer(str(small_llama), output_dir=tmp_path)
    answer = trainer.chat("Say hi", max_new_tokens=16)
    captured = capsys.readouterr()
    assert "not trained yet" in captured.out + captured.err
    assert answer and answer == _base_answer(small_llama, "Say hi", 16)
    assert trainer.chat("Say hi", max_new_tokens=16, adapter=False) == answer
    assert not (tmp_path / "runs.db").exists()  # asking is not a run


def test_after_training_adapter_off_is_the_base_and_on_has_learned(tuned: dict) -> None:
    trainer, question = tuned["trainer"], tuned["question"]
    before = tuned["before_training"]
    assert before and before == _base_answer(trainer.settings.model.name, question, 32)
    assert trainer.chat(question, max_new_tokens=32, adapter=False) == before
    after = trainer.chat(question, max_new_tokens=32)
    expected = json.loads(quickstart_path().read_text(encoding="utf-8").splitlines()[0])["conversations"][1]["value"]
    assert after != before and after[:1] == expected[:1]  # on its way to the data's answer


def test_sample_answers_are_in_the_run_and_its_history(tuned: dict) -> None:
    from backpropagate import runs

    run, question = tuned["run"], tuned["question"]
    assert run.sample_answers == [{"prompt": question, "before": tuned["before_training"],
                                   "after": tuned["trainer"].chat(question, max_new_tokens=32)}]
    assert runs.get(run.run_id, tuned["out"]).details["sample_answers"] == run.sample_answers
    shown = subprocess.run([BACKPROP, "show-run", run.run_id[:8], "--output", str(tuned["out"])],
                           capture_output=True, text=True, check=True).stdout
    block = shown[shown.index("before / after"):]
    from backpropagate.ui.views import run_text

    assert f"  after:  {run.sample_answers[0]['after']}" in run_text(runs.get(run.run_id, tuned["out"]))  # the UI
    assert f"prompt: {question}" in block
    assert f"before: {run.sample_answers[0]['before']}" in block and f"after:  {run.sample_answers[0]['after']}" in block


def test_no_sample_prompts_no_answers(tiny_llama: Path, tmp_path: Path) -> None:
    from backpropagate import runs

    run = Trainer(str(tiny_llama), output_dir=tmp_path, **LEARNS).train(str(quickstart_path()), steps=1)
    assert run.sample_answers == [] and "sample_answers" not in runs.get(run.run_id, tmp_path).details


def test_answers_at_each_evaluation_and_held_out_prompts_by_default(tiny_llama: Path, tmp_path: Path) -> None:
    from backpropagate.data import load_examples
    from backpropagate.training.answers import answers_text

    users = {c.messages[0]["content"] for c in load_examples(str(quickstart_path())).examples}
    trainer = Trainer(str(tiny_llama), output_dir=tmp_path, eval_steps=2, **LEARNS)
    run = trainer.train(str(quickstart_path()), steps=4, eval_fraction=0.25, sample_prompts=["Say hi"])
    assert [e["step"] for e in run.sample_answers[0]["evaluations"]] == [2, 4]  # eval_steps=2, and the end
    assert "  step 2: " in answers_text(run.sample_answers) and "  step 4: " in answers_text(run.sample_answers)
    default = Trainer(str(tiny_llama), output_dir=tmp_path / "d", eval_steps=2, **LEARNS).train(
        str(quickstart_path()), steps=2, eval_fraction=0.25)  # no prompts given: the held-out rows' questions
    assert 1 <= len(default.sample_answers) <= 2 and {a["prompt"] for a in default.sample_answers} <= users


@pytest.mark.parametrize("prompts", ["What is Python?", [""], [3], ["ok", "  "]])
def test_bad_sample_prompts_are_refused_before_the_model_loads(tiny_llama: Path, tmp_path: Path,
                                                               prompts: object) -> None:
    trainer = Trainer(str(tiny_llama), output_dir=tmp_path / "o")
    with pytest.raises(BackpropagateError) as info:
        trainer.train(str(quickstart_path()), steps=1, sample_prompts=prompts)  # type: ignore[arg-type]
    assert info.value.code == "INPUT_INVALID_VALUE"
    assert trainer.model is None and not (tmp_path / "o").exists()


def test_full_fine_tuning_has_no_adapter_to_switch_off(tiny_llama: Path, tmp_path: Path) -> None:
    trainer = Trainer(str(tiny_llama), mode="full", output_dir=tmp_path, batch_size=1, gradient_accumulation=1,
                      max_seq_length=128, save_steps=0, learning_rate=1e-3)
    base = trainer.chat("What is Python?", max_new_tokens=8, adapter=False)  # untrained: the loaded weights
    assert base == _base_answer(tiny_llama, "What is Python?", 8)
    run = trainer.train(str(quickstart_path()), steps=2, sample_prompts=["What is Python?"])
    assert run.sample_answers[0]["before"] == _base_answer(tiny_llama, "What is Python?", 32)
    with pytest.raises(BackpropagateError) as info:
        trainer.chat("What is Python?", adapter=False)
    assert info.value.code == "STATE_NO_ADAPTER" and info.value.hint


def test_cli_sample_prompt_prints_before_and_after(tiny_llama: Path, tmp_path: Path) -> None:
    done = subprocess.run([BACKPROP, "train", "--model", str(tiny_llama), "--data", str(quickstart_path()),
                           "--steps", "1", "--output", str(tmp_path), "--lora-r", "4", "--lora-alpha", "8",
                           "--gradient-accumulation", "1", "--max-seq-length", "64",
                           "--sample-prompt", "What is Python?", "--sample-prompt", "Say hi"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = done.stdout[done.stdout.index("before / after:"):]
    assert "prompt: What is Python?" in summary and "prompt: Say hi" in summary
    assert summary.count("  before: ") == 2 and summary.count("  after:  ") == 2
