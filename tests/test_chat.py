"""``backprop chat`` and the Python load of a saved adapter, on a real tiny model trained here: answers come
from the adapter (its logits differ from the base), ``--compare-base`` shows both, a GGUF answers through
llama.cpp, bad input is a coded error, and nothing prints another library's warning."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from backpropagate import BackpropagateError, Trainer
from backpropagate.chat import ChatSession
from backpropagate.demo import quickstart_path

BACKPROP = str(Path(sys.executable).with_name("backprop"))
SMALL = {"lora_r": 4, "lora_alpha": 8, "batch_size": 2, "gradient_accumulation": 1, "max_seq_length": 64,
         "report_to": "none", "learning_rate": 0.02, "warmup_ratio": 0.0, "lr_scheduler": "constant"}
PROMPT = "What is your name?"
FOREIGN_WARNING = re.compile(r"Warning|WARNING|FutureWarning")


@pytest.fixture(scope="module")
def adapter(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter trained for 8 steps on the quick-start rows."""
    folder = tmp_path_factory.mktemp("chat")
    run = Trainer(str(tiny_llama), output_dir=folder / "out", **SMALL).train(quickstart_path(), steps=8)
    return Path(run.output_path)


def _backprop(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BACKPROP, "chat", *args], capture_output=True, text=True, timeout=600, input=stdin)


def _first_logits(model: torch.nn.Module, tokenizer, prompt: str) -> torch.Tensor:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1]


def test_a_saved_adapter_loaded_in_python_answers_with_the_adapter_on(adapter: Path, tiny_llama: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(str(adapter))
        answer = trainer.chat(PROMPT, max_new_tokens=8)
    assert not [w for w in caught if w.category is not DeprecationWarning], [str(w.message) for w in caught]
    assert trainer.settings.model.name == str(tiny_llama.resolve()) or Path(trainer.settings.model.name) == tiny_llama
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    tuned_logits = _first_logits(trainer.model, trainer.tokenizer, PROMPT)
    assert not torch.allclose(tuned_logits, _first_logits(base, trainer.tokenizer, PROMPT), atol=1e-4)
    assert answer == trainer.chat(PROMPT, max_new_tokens=8) != trainer.chat(PROMPT, max_new_tokens=8, adapter=False)
    loaded = Trainer(str(tiny_llama)).load_adapter(adapter)
    assert loaded.chat(PROMPT, max_new_tokens=8) == answer
    with pytest.raises(BackpropagateError) as info:
        trainer.train(quickstart_path(), steps=1)
    assert info.value.code == "STATE_ADAPTER_LOADED"


def test_one_answer_and_compare_base_through_the_cli(adapter: Path) -> None:
    session = ChatSession.open(adapter, max_new_tokens=8)
    base, tuned = session.compare(PROMPT)
    assert base != tuned
    out = _backprop(str(adapter), "--prompt", PROMPT, "--max-new-tokens", "8")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == tuned
    assert not FOREIGN_WARNING.search(out.stderr), out.stderr
    both = _backprop(str(adapter), "--prompt", PROMPT, "--max-new-tokens", "8", "--compare-base")
    assert both.returncode == 0, both.stderr
    assert both.stdout.startswith("base:  ") and "\ntuned: " in both.stdout
    shown_base, shown_tuned = both.stdout.removeprefix("base:  ").split("\ntuned: ")
    assert (shown_base.strip(), shown_tuned.strip()) == (base, tuned)


def test_an_interactive_conversation_keeps_its_turns(adapter: Path) -> None:
    session = ChatSession.open(adapter, max_new_tokens=6, system="Answer briefly.")
    first, second = session.ask("Hello"), session.ask("And then?")
    assert len(session.turns) == 4 and session.turns[1] == {"role": "assistant", "content": first}
    session.reset()
    again = session.ask("And then?")
    out = _backprop(str(adapter), "--max-new-tokens", "6", "--system", "Answer briefly.",
                    stdin="Hello\nAnd then?\n/reset\nAnd then?\n/exit\n")
    assert out.returncode == 0, out.stderr
    assert "chatting with" in out.stderr and "(conversation cleared)" in out.stderr
    answers = [part.strip() for part in out.stdout.split("you> ") if part.endswith("\n")]  # prompt, answer
    assert answers == [first, second, again]


def test_a_gguf_answers_through_llama_cpp(adapter: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="the export extra (llama-cpp-python) runs GGUFs")
    from backpropagate.export import export_model

    result = export_model(adapter, "gguf", quantization="f16", output=tmp_path / "gguf", verify=False)
    session = ChatSession.open(result.path, max_new_tokens=8)
    try:
        expected = session.ask(PROMPT)
    finally:
        session.close()
    out = _backprop(str(result.path), "--prompt", PROMPT, "--max-new-tokens", "8")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected and not FOREIGN_WARNING.search(out.stderr)
    folder = _backprop(str(result.path.parent), "--gguf", "--prompt", PROMPT, "--max-new-tokens", "8")
    assert folder.returncode == 0 and folder.stdout.strip() == expected, folder.stderr


@pytest.mark.parametrize(("args", "code"), [
    (["{missing}", "--prompt", "hi"], "INPUT_NOT_A_MODEL_DIR"),
    (["{model}", "--prompt", "hi", "--compare-base"], "STATE_NO_ADAPTER"),
    (["{adapter}", "--prompt", "hi", "--temperature", "-1"], "INPUT_INVALID_VALUE"),
    (["{model}", "--gguf", "--prompt", "hi"], "INPUT_NOT_A_MODEL_DIR"),
])
def test_bad_input_is_a_coded_error(args: list[str], code: str, adapter: Path, tiny_llama: Path,
                                    tmp_path: Path) -> None:
    paths = {"missing": str(tmp_path / "nothing"), "model": str(tiny_llama), "adapter": str(adapter)}
    out = _backprop(*[a.format(**paths) for a in args])
    assert out.returncode == 1 and out.stderr.startswith(f"[{code}]"), out.stderr
    assert "Traceback" not in out.stderr
