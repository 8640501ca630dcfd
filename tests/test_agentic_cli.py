"""Tool-call and reasoning rows through the CLI: ``backprop data preview`` shows what is trained, and bad agentic
rows are coded errors (row and turn named, no traceback, nothing written) before any model loads."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from backpropagate.data.templates import IGNORE_INDEX
from process_helpers import BACKPROP
from support import assets, real_tokenizers

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city.",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
TOOL_ROW = {"tools": TOOLS, "messages": [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call0AbC1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call0AbC1", "content": "18 C, cloudy"},
    {"role": "assistant", "content": "It is 18 C and cloudy."}]}
REASONING_ROW = {"messages": [{"role": "user", "content": "What is 17 * 3?"},
                              {"role": "assistant", "reasoning_content": "17 * 3 = 51.", "content": "51."}]}


def backprop(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BACKPROP, *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _jsonl(path: Path, *rows: dict) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def qwen3() -> Path:
    try:
        return real_tokenizers.tokenizer_dir("qwen3")
    except assets.AssetUnavailable as exc:
        pytest.skip(str(exc))


def test_preview_tool_row_json(qwen3: Path, tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "tools.jsonl", REASONING_ROW, TOOL_ROW)
    done = backprop("data", "preview", str(data), "--model", str(qwen3), "--row", "2", "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["row"] == 2 and shown["total_rows"] == 2
    assert len(shown["input_ids"]) == len(shown["labels"]) == shown["tokens"]
    trained = [s["text"] for s in shown["segments"] if s["trained"]]
    assert trained[0].startswith("<tool_call>\n") and '"arguments": {"city": "Paris"}' in trained[0]
    assert trained[0].endswith("</tool_call><|im_end|>")
    assert trained[-1].endswith("It is 18 C and cloudy.<|im_end|>")
    untrained = "".join(s["text"] for s in shown["segments"] if not s["trained"])
    assert "<tool_response>\n18 C, cloudy\n</tool_response>" in untrained and '"name": "get_weather"' in untrained
    assert shown["trained_tokens"] == sum(1 for label in shown["labels"] if label != IGNORE_INDEX)
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(shown["labels"], shown["input_ids"], strict=True))


def test_preview_reasoning_row_text(qwen3: Path, tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "reasoning.jsonl", REASONING_ROW)
    done = backprop("data", "preview", str(data), "--model", str(qwen3))
    assert done.returncode == 0, done.stderr
    assert "row 1 of 1:" in done.stdout and "trained" in done.stdout
    parts = done.stdout.split("--- trained parts ---", 1)[1]
    assert "<think>\n17 * 3 = 51.\n</think>\n\n51.<|im_end|>" in parts and "What is 17" not in parts


def test_preview_says_which_fallback_it_uses(tiny_llama: Path, tmp_path: Path) -> None:
    """The tiny Llama's template has no reasoning format: the reasoning becomes a <think> prefix, and it says so."""
    data = _jsonl(tmp_path / "reasoning.jsonl", REASONING_ROW)
    done = backprop("data", "preview", str(data), "--model", str(tiny_llama))
    assert done.returncode == 0, done.stderr
    assert "note: the chat template has no reasoning format" in done.stdout
    assert "<think>\n17 * 3 = 51.\n</think>\n\n51." in done.stdout.split("--- trained parts ---", 1)[1]


# Each bad row, and the command that meets it: `train` (nothing may be written) or `data preview`.
BAD_ROWS = {
    "arguments not JSON": ({"messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": "{city: Paris"}}]},
        {"role": "tool", "content": "x"}, {"role": "assistant", "content": "ok"}]},
        "INPUT_INVALID_TOOL_CALL", "row 1, turn 2"),
    "tool result without a call": ({"messages": [
        {"role": "user", "content": "Hi"}, {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "ok"}]}, "INPUT_TOOL_RESULT_WITHOUT_CALL", "row 1, turn 2"),
    "tool schema without a name": ({"tools": [{"type": "function", "function": {"description": "no name"}}],
                                    "messages": [{"role": "user", "content": "Hi"},
                                                 {"role": "assistant", "content": "ok"}]},
                                   "INPUT_INVALID_TOOLS", "entry 1 of `tools`"),
    "glaive function_call not JSON": ({"conversations": [
        {"from": "human", "value": "Hi"}, {"from": "function_call", "value": "get_weather(Paris)"},
        {"from": "observation", "value": "18"}, {"from": "gpt", "value": "ok"}]},
        "INPUT_INVALID_TOOL_CALL", "row 1, turn 2"),
}


TRAINED_BY = {"arguments not JSON": "train", "tool result without a call": "train",
              "tool schema without a name": "data preview", "glaive function_call not JSON": "data preview"}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_agentic_rows_fail_before_the_model_loads(case: str, tiny_llama: Path, tmp_path: Path) -> None:
    row, code, where = BAD_ROWS[case]
    good = ({"conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi there."}]}
            if "conversations" in row else
            {"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there."}]})
    data = _jsonl(tmp_path / "bad.jsonl", good, row)
    original, out = data.read_bytes(), tmp_path / "out"
    commands = {"data preview": ["data", "preview", str(data), "--model", str(tiny_llama), "--row", "2"],
                "train": ["train", "--model", str(tiny_llama), "--data", str(data), "--output", str(out),
                          "--steps", "2", "--report-to", "none"]}
    for argv in [commands[TRAINED_BY[case]]]:
        done = backprop(*argv, cwd=tmp_path)
        assert done.returncode != 0, done.stdout
        assert f"[{code}]: " in done.stderr and where.replace("row 1", "row 2") in done.stderr, done.stderr
        assert "hint: " in done.stderr and "Traceback" not in done.stdout + done.stderr
        assert "model_loaded" not in done.stdout + done.stderr  # refused from the data, before any weights
    assert data.read_bytes() == original
    written = [p for p in out.rglob("*") if p.is_file() and p.name != "runs.db"] if out.exists() else []
    assert not [p for p in written if p.suffix in (".safetensors", ".bin", ".partial") or "lora" in p.parts], written
