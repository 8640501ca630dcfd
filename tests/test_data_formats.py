"""Format detection over the whole dataset and normalisation rules for every format."""

from __future__ import annotations

import json

import pytest

from backpropagate.data.formats import FORMATS, Conversation, FormatReport, detect_format, to_examples
from backpropagate.errors import BackpropagateError


def alpaca(i: int) -> dict:
    return {"instruction": f"Question {i}", "input": "", "output": f"Answer {i}"}


def sharegpt(text: str = "hi") -> dict:
    return {"conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": "hello"}]}


def convert(rows: list[dict], **kwargs) -> list:
    return to_examples(rows, detect_format(rows, **kwargs), **{k: v for k, v in kwargs.items() if k == "text_column"})


def error(code: str, fn, *args, **kwargs) -> BackpropagateError:
    with pytest.raises(BackpropagateError) as err:
        fn(*args, **kwargs)
    assert err.value.code == code, err.value
    return err.value


# --- detection -----------------------------------------------------------------------------------
def test_report_says_why() -> None:
    report = detect_format([alpaca(i) for i in range(5)])
    assert report == FormatReport("alpaca", 5, 5, report.reason)
    assert "instruction" in report.reason and "output" in report.reason
    assert FORMATS == ("sharegpt", "alpaca", "openai", "chatml", "text")


def test_mixed_formats_beyond_the_first_row() -> None:
    rows = [alpaca(i) for i in range(50)]
    rows[39] = sharegpt()
    err = error("INPUT_MIXED_FORMATS", detect_format, rows)
    assert "alpaca" in err.message and "sharegpt" in err.message and "40" in err.message


def test_detection_samples_the_tail_of_large_datasets() -> None:
    rows = [alpaca(i) for i in range(20_000)]
    rows[-1] = sharegpt()
    err = error("INPUT_MIXED_FORMATS", detect_format, rows, max_check=100)
    assert "20000" in err.message
    rows[-1] = alpaca(0)
    report = detect_format(rows, max_check=100)
    assert (report.rows_checked, report.total_rows) == (100, 20_000)
    assert detect_format(rows, max_check=100) == report


def test_row_missed_by_sampling_is_caught_when_converting() -> None:
    rows = [alpaca(i) for i in range(5_000)]
    rows[4_321] = sharegpt()
    report = detect_format(rows, max_check=10)
    assert report.name == "alpaca"
    assert "4322" in error("INPUT_MIXED_FORMATS", to_examples, rows, report).message
    rows[4_321] = {"question": "?"}
    assert "question" in error("INPUT_UNKNOWN_FORMAT", to_examples, rows, report).message


def test_unknown_format_lists_keys() -> None:
    err = error("INPUT_UNKNOWN_FORMAT", detect_format, [{"prompt": "a", "completion": "b"}])
    assert "prompt" in err.message and "completion" in err.message and "row 1" in err.message


def test_forced_format() -> None:
    rows = [{"instruction": "Summarise", "output": "ok", "text": "### Instruction: Summarise ### Response: ok"}]
    assert detect_format(rows).name == "alpaca"
    assert detect_format(rows, format="text").name == "text"
    assert to_examples(rows, detect_format(rows, format="text")) == [rows[0]["text"]]
    err = error("INPUT_INVALID_VALUE", detect_format, rows, format="vicuna")
    assert all(name in err.message for name in FORMATS)
    assert "row 2" in error("INPUT_UNKNOWN_FORMAT", detect_format, [*rows, sharegpt()], format="alpaca").message
    error("INPUT_UNKNOWN_FORMAT", detect_format, [sharegpt()], format="openai")


def test_text_column() -> None:
    rows = [{"id": 1, "body": "Doc one."}, {"id": 2, "body": "<|im_start|>user\nq<|im_end|><|im_start|>assistant\na<|im_end|>"}]
    assert to_examples(rows[:1], detect_format(rows[:1], text_column="body"), text_column="body") == ["Doc one."]
    error("INPUT_MIXED_FORMATS", detect_format, rows, text_column="body")
    chat = convert(rows[1:], text_column="body")
    assert chat[0].messages == ({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"})
    err = error("INPUT_COLUMN_NOT_FOUND", detect_format, rows, text_column="content")
    assert "id" in err.message and "body" in err.message
    # Named explicitly, the text column wins over structured columns.
    both = [{**alpaca(1), "text": "prompt + answer"}]
    assert detect_format(both).name == "alpaca"
    assert detect_format(both, text_column="text").name == "text"


def test_empty_and_bad_arguments() -> None:
    error("INPUT_DATASET_EMPTY", detect_format, [])
    error("INPUT_INVALID_VALUE", detect_format, [alpaca(1)], max_check=0)


# --- sharegpt ------------------------------------------------------------------------------------
def test_sharegpt_roles_system_and_tools() -> None:
    row = {"system": "Sys", "tools": json.dumps([{"name": "f"}]), "conversations": [
        {"from": "Human", "value": "q"}, {"from": "function_call", "value": {"name": "f", "arguments": {}}},
        {"from": "observation", "value": " r "}, {"from": "tool", "value": "t"}, {"from": "function", "value": "u"},
        {"from": "model", "value": "m"}, {"from": "chatgpt", "value": "c"}, {"from": "bot", "value": "b"},
        {"from": "user", "value": "q2"}, {"from": "assistant", "value": "a2"}]}
    (conv,) = convert([row])
    assert isinstance(conv, Conversation) and conv.tools == [{"type": "function", "function": {"name": "f"}}]
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant", "tool", "tool", "tool", "assistant",
                                                  "assistant", "assistant", "user", "assistant"]
    assert conv.messages[2]["content"] == "" and conv.messages[2]["tool_calls"][0]["function"] == {
        "name": "f", "arguments": {}}
    assert conv.messages[3] == {"role": "tool", "content": " r ", "name": "f",
                                "tool_call_id": conv.messages[2]["tool_calls"][0]["id"]}


def test_sharegpt_in_messages_column() -> None:
    (conv,) = convert([{"messages": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}])
    assert conv.messages == ({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"})


def test_sharegpt_unknown_role_and_bad_content() -> None:
    rows = [sharegpt(), {"conversations": [{"from": "narrator", "value": "x"}, {"from": "gpt", "value": "a"}]}]
    err = error("INPUT_INVALID_CONVERSATION", convert, rows)
    assert "row 2" in err.message and "narrator" in err.message
    error("INPUT_INVALID_CONVERSATION", convert, [{"conversations": [{"from": "human", "value": 5},
                                                                      {"from": "gpt", "value": "a"}]}])
    error("INPUT_INVALID_CONVERSATION", convert, [{"conversations": []}])
    error("INPUT_INVALID_JSON", convert, [{**sharegpt(), "tools": "[{broken"}])


# --- alpaca --------------------------------------------------------------------------------------
def test_alpaca_input_history_and_system() -> None:
    row = {"instruction": "Translate:", "input": " bonjour ", "output": "hello", "system": "S",
           "history": [["q1", "a1"], ["q2", "a2"]]}
    (conv,) = convert([row])
    assert conv.messages == (
        {"role": "system", "content": "S"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"},
        {"role": "user", "content": "Translate:\n\n bonjour "}, {"role": "assistant", "content": "hello"})
    (plain,) = convert([{"instruction": "Hi", "output": "Hey", "system": ""}])
    assert plain.messages == ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"})
    error("INPUT_INVALID_CONVERSATION", convert, [{**row, "history": [["only one"]]}])
    error("INPUT_INVALID_CONVERSATION", convert, [{**row, "output": 42}])


# --- openai --------------------------------------------------------------------------------------
def test_openai_parts_roles_and_tool_calls() -> None:
    row = {"messages": [
        {"role": "developer", "content": "D"},
        {"role": "user", "content": [{"type": "text", "text": "Look "}, {"type": "text", "text": "here"}]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}},
            {"id": "2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
        {"role": "function", "name": "f", "content": "1"},
        {"role": "assistant", "content": "done"}], "tools": [{"type": "function", "function": {"name": "f"}}]}
    (conv,) = convert([row])
    assert conv.messages == (
        {"role": "system", "content": "D"}, {"role": "user", "content": "Look here"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "id": "1", "function": {"name": "f", "arguments": {"a": 1}}},
            {"type": "function", "id": "2", "function": {"name": "g", "arguments": {}}}]},
        {"role": "tool", "content": "1", "name": "f", "tool_call_id": "1"}, {"role": "assistant", "content": "done"})
    assert conv.tools == row["tools"]
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                          {"role": "assistant", "content": "a"}]}
    assert "image_url" in error("INPUT_INVALID_CONVERSATION", convert, [image]).message
    error("INPUT_INVALID_CONVERSATION", convert, [{"messages": [{"role": "robot", "content": "x"}]}])
    error("INPUT_INVALID_CONVERSATION", convert, [{"messages": [{"role": "user", "content": None},
                                                                {"role": "assistant", "content": "a"}]}])


# --- chatml --------------------------------------------------------------------------------------
def test_chatml_keeps_content_exactly() -> None:
    text = ("<|im_start|>system\n\nS \n<|im_end|>\n<|im_start|>user\n q<|im_end|>"
            "<|im_start|>assistant\na\n\n<|im_end|>\n<|endoftext|>")
    (conv,) = convert([{"text": text}])
    assert conv.messages == ({"role": "system", "content": "\nS \n"}, {"role": "user", "content": " q"},
                             {"role": "assistant", "content": "a\n\n"})
    error("INPUT_INVALID_CONVERSATION", convert, [{"text": "<|im_start|>user\nq<|im_end|><|im_start|>assistant\na"}])
    error("INPUT_INVALID_CONVERSATION", convert, [{"text": "<|im_start|>user\nq<|im_end|> stray <|im_start|>assistant\na<|im_end|>"}])
    error("INPUT_INVALID_CONVERSATION", convert, [{"text": "<|im_start|>wizard\nq<|im_end|>"}])


def test_text_mentioning_chatml_mid_document_is_raw_text() -> None:
    rows = [{"text": "Models such as Qwen use <|im_start|> to open a turn."}]
    assert detect_format(rows).name == "text"


# --- assistant turns -----------------------------------------------------------------------------
def test_no_assistant_turn() -> None:
    rows = [sharegpt(), {"conversations": [{"from": "human", "value": "q"}]}]
    err = error("INPUT_NO_ASSISTANT_TURN", convert, rows)
    assert "row 2" in err.message
    empty = [alpaca(1), {"instruction": "q", "input": "", "output": "  "}]
    assert "row 2" in error("INPUT_NO_ASSISTANT_TURN", convert, empty).message
    prompts = to_examples(rows, detect_format(rows), require_assistant=False)
    assert prompts[1].messages == ({"role": "user", "content": "q"},)
    chat = [{"text": "<|im_start|>user\nq<|im_end|>"}]
    error("INPUT_NO_ASSISTANT_TURN", convert, chat)


def test_a_misspelled_key_is_named() -> None:
    err = error("INPUT_UNKNOWN_FORMAT", detect_format, [{"instruction": "Add 2 and 2.", "ouput": "4"}])
    assert "`ouput` looks like a misspelled `output`" in err.message
    err = error("INPUT_UNKNOWN_FORMAT", detect_format, [{"question": "q", "answer": "a"}])
    assert "misspelled" not in err.message  # nothing near a known key: only the keys are listed
