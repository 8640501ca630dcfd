"""Every family: our rendering is the model's own template, and labels cover exactly the assistant turns."""

from __future__ import annotations

import pytest

from backpropagate.data.formats import Conversation
from backpropagate.data.templates import (
    IGNORE_INDEX,
    end_of_turn_tokens,
    render,
    tokenize_conversation,
    tokenize_text,
)
from backpropagate.errors import BackpropagateError
from backpropagate.testing import FAMILIES, build_tiny_model

CONVERSATION = Conversation(messages=(
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4, of course."},
    {"role": "user", "content": "And (3 * 3)?\nShow work."},
    {"role": "assistant", "content": "3 * 3 = 9.\nDone!"},
    {"role": "user", "content": "Thanks"},
    {"role": "assistant", "content": "You're welcome — ünïcode ✓"},
))


@pytest.fixture(scope="module", params=FAMILIES)
def tokenizer(request: pytest.FixtureRequest):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_tiny_model(request.param, size="tiny", seed=0))


def _label_segments(ids: list[int], labels: list[int]) -> list[list[int]]:
    segments, current = [], []
    for tok, lab in zip(ids, labels, strict=True):
        if lab != IGNORE_INDEX:
            assert lab == tok
            current.append(tok)
        elif current:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    return segments


def test_render_is_the_models_own_template(tokenizer) -> None:
    messages = list(CONVERSATION.messages)
    assert render(tokenizer, CONVERSATION) == tokenizer.apply_chat_template(messages, tokenize=False)
    sample = tokenize_conversation(tokenizer, CONVERSATION)
    expected_ids = tokenizer.apply_chat_template(messages, tokenize=True)
    if isinstance(expected_ids, dict) or hasattr(expected_ids, "keys"):
        expected_ids = expected_ids["input_ids"]
    assert sample.input_ids == list(expected_ids)


def test_labels_are_exactly_the_assistant_turns(tokenizer) -> None:
    sample = tokenize_conversation(tokenizer, CONVERSATION)
    segments = _label_segments(sample.input_ids, sample.labels)
    assistants = [m["content"] for m in CONVERSATION.messages if m["role"] == "assistant"]
    assert len(segments) == len(assistants)
    eot = end_of_turn_tokens(tokenizer)
    text = render(tokenizer, CONVERSATION)
    for segment, content in zip(segments, assistants, strict=True):
        decoded = tokenizer.decode(segment, skip_special_tokens=False)
        closing = [m for m in eot if decoded.endswith(m)]
        assert closing, f"segment {decoded!r} does not end with an end-of-turn token"
        body = decoded[: -len(closing[0])]
        # The body is the assistant text; a template that writes a space before it (Mistral) merges that
        # space into the first token, which must then be learned too. A thinking template (Qwen3) writes an
        # empty think block into the last turn, outside its generation prompt: the model writes it, so it is trained.
        body = body.removeprefix("<think>\n\n</think>\n\n") if content == assistants[-1] else body
        assert body == content or (body == " " + content and " " + content in text), (body, content)


def test_train_on_everything(tokenizer) -> None:
    sample = tokenize_conversation(tokenizer, CONVERSATION, train_on_responses=False)
    assert sample.labels == sample.input_ids


def test_raw_text_trains_on_all_tokens_and_ends_with_eos(tokenizer) -> None:
    sample = tokenize_text(tokenizer, "A plain document.")
    assert sample.labels == sample.input_ids
    assert sample.input_ids[-1] == tokenizer.eos_token_id


def test_tool_and_system_roles_render(tokenizer) -> None:
    conv = Conversation(messages=(
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": '{"name": "weather", "arguments": {"city": "Paris"}}'},
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "It is 21 degrees."},
    ))
    if "[INST]" in tokenizer.chat_template:
        # Mistral's template demands strict user/assistant alternation: a clear, coded refusal.
        with pytest.raises(BackpropagateError) as info:
            tokenize_conversation(tokenizer, conv, row=7)
        assert info.value.code == "INPUT_INVALID_CONVERSATION" and "row 7" in info.value.message
        return
    sample = tokenize_conversation(tokenizer, conv)
    assert len(_label_segments(sample.input_ids, sample.labels)) == 2
    text = render(tokenizer, conv)
    assert '{"temp": 21}' in text


def test_template_that_rewrites_assistant_text_is_labelled_as_rendered(tokenizer) -> None:
    """Labels come from the rendering: the turn is trained as the template writes it (here upper-cased)."""
    original = tokenizer.chat_template
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: "
                               "{{ m['content'] | upper }}{{ eos_token }}{% endfor %}")
    try:
        conv = Conversation(messages=({"role": "user", "content": "hi"},
                                      {"role": "assistant", "content": "hello there"}))
        sample = tokenize_conversation(tokenizer, conv)
        segments = _label_segments(sample.input_ids, sample.labels)
        assert len(segments) == 1
        # this template has no generation prompt, so the role line is what the model writes
        assert tokenizer.decode(segments[0]) == f"assistant: HELLO THERE{tokenizer.eos_token}"
    finally:
        tokenizer.chat_template = original


def test_template_that_loses_the_turn_is_refused(tokenizer) -> None:
    original = tokenizer.chat_template
    tokenizer.chat_template = ("{% for m in messages|reverse %}{{ m['role'] }}: {{ m['content'] }}"
                               "{{ eos_token }}{% endfor %}")
    try:
        conv = Conversation(messages=({"role": "user", "content": "hi"},
                                      {"role": "assistant", "content": "hello there"}))
        with pytest.raises(BackpropagateError) as info:
            tokenize_conversation(tokenizer, conv)
        assert info.value.code == "INPUT_TEMPLATE_MISMATCH"
    finally:
        tokenizer.chat_template = original
