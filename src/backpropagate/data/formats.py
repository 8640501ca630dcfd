"""Recognise the dataset format (ShareGPT, Alpaca, OpenAI, ChatML text, raw text) and normalise rows.

Detection samples rows across the whole dataset rather than trusting the first one, because the
usual failure is a file that was concatenated from two sources. Normalisation turns every
conversation format into the same ``role``/``content`` messages, so the rest of the library only
knows one shape; message text is kept exactly as given.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from backpropagate.errors import BackpropagateError

from . import agentic
from .validate import MAX_DEPTH, tree_problem

__all__ = ["FORMATS", "Conversation", "FormatReport", "Message", "detect_format", "to_examples"]

# {"role": "system" | "user" | "assistant" | "tool", "content": str} plus, where present, the keys chat
# templates read: "tool_calls" and "reasoning_content" (assistant), "tool_call_id" and "name" (tool).
Message = agentic.Message

FORMATS = ("sharegpt", "alpaca", "openai", "chatml", "text")
DEFAULT_TEXT_COLUMN = "text"

SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "chatgpt": "assistant",
    "bot": "assistant", "function_call": "assistant",
    "system": "system",
    "observation": "tool", "tool": "tool", "function": "tool",
}
OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
                "tool": "tool", "function": "tool"}

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# Between ChatML blocks only whitespace and special tokens such as <|endoftext|> may appear.
_CHATML_GAP = re.compile(r"^(\s|<\|[^|<>\s]*\|>)*$")


@dataclass(frozen=True)
class Conversation:
    """One normalised training conversation; ``tools`` holds the row's tool schemas, if any."""

    messages: tuple[Message, ...]
    tools: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class FormatReport:
    """What ``detect_format`` decided and why, so the choice can be shown to the user."""

    name: str
    rows_checked: int
    total_rows: int
    reason: str


# --------------------------------------------------------------------------------------------
# detection
# --------------------------------------------------------------------------------------------
def _messages_key(row: Mapping[str, Any], key: str, field: str) -> bool:
    """True when ``row[key]`` is a list whose first turn is a dict carrying ``field``."""
    turns = row.get(key)
    if not isinstance(turns, list):
        return False
    if not turns:
        return key == "conversations" or field == "role"  # an empty list still says what was meant
    first = turns[0]
    return isinstance(first, Mapping) and first.get(field) is not None


def _fits_sharegpt(row: Mapping[str, Any], text_column: str) -> bool:
    return _messages_key(row, "conversations", "from") or (
        _messages_key(row, "messages", "from") and not _messages_key(row, "messages", "role"))


def _fits_openai(row: Mapping[str, Any], text_column: str) -> bool:
    return _messages_key(row, "messages", "role")


def _fits_alpaca(row: Mapping[str, Any], text_column: str) -> bool:
    return isinstance(row.get("instruction"), str) and "output" in row


def _fits_chatml(row: Mapping[str, Any], text_column: str) -> bool:
    value = row.get(text_column)
    return isinstance(value, str) and value.lstrip().startswith(IM_START)


def _fits_text(row: Mapping[str, Any], text_column: str) -> bool:
    return isinstance(row.get(text_column), str)


_FITS: dict[str, Callable[[Mapping[str, Any], str], bool]] = {
    "sharegpt": _fits_sharegpt, "openai": _fits_openai, "alpaca": _fits_alpaca,
    "chatml": _fits_chatml, "text": _fits_text,
}
_REASONS = {
    "sharegpt": "rows have a `conversations` (or `messages`) list of from/value turns",
    "openai": "rows have a `messages` list of role/content turns",
    "alpaca": "rows have `instruction` and `output` keys",
    "chatml": "the `{col}` column holds <|im_start|>role ... <|im_end|> blocks",
    "text": "the `{col}` column holds plain text without ChatML markers",
}


def _classify(row: Mapping[str, Any], text_column: str, explicit_column: bool) -> str | None:
    """First fitting format; structured keys win unless the caller named a text column."""
    order = ("chatml", "text", "sharegpt", "openai", "alpaca") if explicit_column else (
        "sharegpt", "openai", "alpaca", "chatml", "text")
    return next((name for name in order if _FITS[name](row, text_column)), None)


def sample_indices(total: int, max_check: int) -> list[int]:
    """Deterministic 0-based rows to check: the first half of the budget, then an even stride to the end."""
    if total <= max_check:
        return list(range(total))
    head = max(1, max_check // 2)
    rest = max_check - head
    if rest == 1:
        return [*range(head), total - 1]
    span = total - 1 - head  # stride from row `head` to the last row, both included
    return sorted(set(range(head)) | {head + (i * span) // (rest - 1) for i in range(rest)})


def detect_format(rows: list[dict[str, Any]], *, format: str | None = None, text_column: str | None = None,
                  max_check: int = 1000) -> FormatReport:
    """Decide the format from up to ``max_check`` rows spread over the dataset; raise if rows disagree."""
    if format is not None and format not in FORMATS:
        raise BackpropagateError(
            "INPUT_INVALID_VALUE", f"format={format!r} is invalid: expected one of {', '.join(FORMATS)}.")
    if isinstance(max_check, bool) or not isinstance(max_check, int) or max_check < 1:
        raise BackpropagateError("INPUT_INVALID_VALUE", f"max_check={max_check!r} is invalid: expected an int >= 1.")
    if not rows:
        raise BackpropagateError("INPUT_DATASET_EMPTY", "the dataset has no rows.")
    column = text_column or DEFAULT_TEXT_COLUMN
    indices = sample_indices(len(rows), max_check)
    found: dict[str, list[int]] = {}
    for index in indices:
        row = _row(rows, index)
        if text_column is not None and format in (None, "chatml", "text") and row.get(text_column) is None:
            raise BackpropagateError(
                "INPUT_COLUMN_NOT_FOUND",
                f"text_column={text_column!r} is not in row {index + 1}; columns present: {_keys(row)}.")
        if format is not None:
            if not _FITS[format](row, column):
                raise BackpropagateError(
                    "INPUT_UNKNOWN_FORMAT",
                    f"row {index + 1} is not in the forced format {format!r} "
                    f"({_REASONS[format].format(col=column)} is expected); {_describe(row, column)}.")
            continue
        name = _classify(row, column, text_column is not None)
        if name is None:
            raise BackpropagateError(
                "INPUT_UNKNOWN_FORMAT",
                f"row {index + 1} matches no known format (sharegpt, alpaca, openai, chatml, text); "
                f"{_describe(row, column)}.")
        found.setdefault(name, []).append(index + 1)
    checked = f"checked {len(indices)} of {len(rows)} rows"
    if format is not None:
        return FormatReport(format, len(indices), len(rows), f"Forced by format={format!r} ({checked}).")
    if len(found) > 1:
        parts = "; ".join(f"{name} (rows {', '.join(map(str, idx[:3]))}{', ...' if len(idx) > 3 else ''})"
                          for name, idx in found.items())
        raise BackpropagateError("INPUT_MIXED_FORMATS", f"rows are in different formats: {parts}.")
    name = next(iter(found))
    reason = _REASONS[name].format(col=column)
    return FormatReport(name, len(indices), len(rows), f"Detected {name}: {reason} ({checked}).")


# --------------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------------
def to_examples(rows: list[dict[str, Any]], report: FormatReport, *, text_column: str | None = None,
                require_assistant: bool = True) -> list[Conversation | str]:
    """Normalise every row to a ``Conversation`` (or ``str`` for raw text) in the reported format."""
    if report.name not in FORMATS:
        raise BackpropagateError(
            "INPUT_INVALID_VALUE", f"format={report.name!r} is invalid: expected one of {', '.join(FORMATS)}.")
    column = text_column or DEFAULT_TEXT_COLUMN
    convert = _CONVERTERS[report.name]
    examples: list[Conversation | str] = []
    for index in range(len(rows)):
        row = _row(rows, index)
        number = index + 1
        if not _FITS[report.name](row, column):
            _raise_misfit(row, number, report.name, column, text_column)
        if report.name == "text":
            examples.append(row[column])
            continue
        messages = convert(row, number, column)
        if not messages:
            raise BackpropagateError("INPUT_INVALID_CONVERSATION", f"row {number} has no messages.")
        for turn, message in enumerate(messages, start=1):
            if not isinstance(message["content"], str):
                raise BackpropagateError(
                    "INPUT_INVALID_CONVERSATION",
                    f"row {number}, turn {turn} ({message['role']}): content is "
                    f"{type(message['content']).__name__}, expected text.")
        agentic.link_tool_results(messages, number)
        if require_assistant and not any(m["role"] == "assistant" and (
                m["content"].strip() or m.get("tool_calls") or m.get("reasoning_content")) for m in messages):
            raise BackpropagateError(
                "INPUT_NO_ASSISTANT_TURN", f"row {number} has no non-empty assistant turn to train on.")
        examples.append(Conversation(tuple(messages), _tools(row, number)))
    return examples


def _raise_misfit(row: Mapping[str, Any], number: int, name: str, column: str, text_column: str | None) -> None:
    """Explain why a row does not fit the chosen format: missing column, other format or none."""
    if text_column is not None and name in ("chatml", "text") and row.get(text_column) is None:
        raise BackpropagateError(
            "INPUT_COLUMN_NOT_FOUND",
            f"text_column={text_column!r} is not in row {number}; columns present: {_keys(row)}.")
    other = _classify(row, column, text_column is not None)
    if other is not None:
        raise BackpropagateError(
            "INPUT_MIXED_FORMATS", f"row {number} is in {other} format but the dataset was detected as {name}.")
    raise BackpropagateError(
        "INPUT_UNKNOWN_FORMAT", f"row {number} is not in {name} format; {_describe(row, column)}.")


def _sharegpt(row: Mapping[str, Any], number: int, column: str) -> list[Message]:
    key = "conversations" if isinstance(row.get("conversations"), list) else "messages"
    messages = _system_column(row, number)
    for turn, item in enumerate(row[key], start=1):
        if not isinstance(item, Mapping):
            raise BackpropagateError(
                "INPUT_INVALID_CONVERSATION", f"row {number}, turn {turn}: expected an object with from/value.")
        source = item.get("from")
        kind = source.lower() if isinstance(source, str) else None
        role = SHAREGPT_ROLES.get(kind) if kind is not None else None
        if kind is None or role is None:
            raise BackpropagateError(
                "INPUT_INVALID_CONVERSATION",
                f"row {number}, turn {turn}: unknown role {source!r}; expected one of {', '.join(SHAREGPT_ROLES)}.")
        content = item.get("value")
        if kind == "function_call":
            messages.append(agentic.function_call_turn(content, number, turn))
        elif role == "tool":
            messages.append(agentic.tool_message(item, content))
        elif role == "assistant":
            messages.append(agentic.assistant(item, content, number, turn))
        else:
            messages.append({"role": role, "content": content})
    return messages


def _alpaca(row: Mapping[str, Any], number: int, column: str) -> list[Message]:
    messages = _system_column(row, number)
    history = row.get("history")
    if history is not None:
        if not isinstance(history, list):
            raise BackpropagateError(
                "INPUT_INVALID_CONVERSATION", f"row {number}: `history` must be a list of [question, answer] pairs.")
        for turn, pair in enumerate(history, start=1):
            if not (isinstance(pair, list | tuple) and len(pair) == 2):
                raise BackpropagateError(
                    "INPUT_INVALID_CONVERSATION",
                    f"row {number}: history item {turn} is not a [question, answer] pair.")
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = row["instruction"]
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise BackpropagateError(
            "INPUT_INVALID_CONVERSATION", f"row {number}: `input` is {type(extra).__name__}, expected text.")
    if extra:
        prompt = f"{prompt}\n\n{extra}"
    messages.append({"role": "user", "content": prompt})
    if row.get("output") is not None:
        messages.append({"role": "assistant", "content": row["output"]})
    return messages


def _openai(row: Mapping[str, Any], number: int, column: str) -> list[Message]:
    messages = []
    for turn, item in enumerate(row["messages"], start=1):
        if not isinstance(item, Mapping):
            raise BackpropagateError(
                "INPUT_INVALID_CONVERSATION", f"row {number}, turn {turn}: expected an object with role/content.")
        source = item.get("role")
        role = OPENAI_ROLES.get(source) if isinstance(source, str) else None
        if role is None:
            raise BackpropagateError(
                "INPUT_INVALID_CONVERSATION",
                f"row {number}, turn {turn}: unknown role {source!r}; expected one of {', '.join(OPENAI_ROLES)}.")
        content = _openai_content(item.get("content"), number, turn)
        if role == "assistant":
            messages.append(agentic.assistant(item, content, number, turn))
        elif role == "tool":
            messages.append(agentic.tool_message(item, content))
        else:
            messages.append({"role": role, "content": content})
    return messages


def _openai_content(content: Any, number: int, turn: int) -> Any:
    """A string stays as is; a list of text parts is joined the way chat templates concatenate them."""
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, Mapping) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            raise BackpropagateError(
                "INPUT_INVALID_CONVERSATION",
                f"row {number}, turn {turn}: content part of type {kind!r} is not supported; only text parts are.")
    return "".join(texts)


def _chatml(row: Mapping[str, Any], number: int, column: str) -> list[Message]:
    """Parse ``<|im_start|>{role}\\n{content}<|im_end|>`` blocks; only the newline after the role goes."""
    text: str = row[column]
    messages: list[Message] = []
    position = 0
    while True:
        start = text.find(IM_START, position)
        gap = text[position:] if start < 0 else text[position:start]
        if not _CHATML_GAP.match(gap):
            raise BackpropagateError(
                "INPUT_INVALID_CONVERSATION",
                f"row {number}: text outside <|im_start|> ... <|im_end|> blocks: {gap.strip()[:60]!r}.")
        if start < 0:
            return messages
        body_start = start + len(IM_START)
        end = text.find(IM_END, body_start)
        if end < 0:
            raise BackpropagateError(
                "INPUT_INVALID_CONVERSATION", f"row {number}: block {len(messages) + 1} has no closing <|im_end|>.")
        block = text[body_start:end]
        source, newline, content = block.partition("\n")
        role = OPENAI_ROLES.get(source.strip())
        if not newline or role is None:
            raise BackpropagateError(
                "INPUT_INVALID_CONVERSATION",
                f"row {number}, block {len(messages) + 1}: unknown role {source!r}; expected "
                f"<|im_start|>role followed by a newline, role one of {', '.join(OPENAI_ROLES)}.")
        messages.append({"role": role, "content": content})
        position = end + len(IM_END)


_CONVERTERS: dict[str, Callable[[Mapping[str, Any], int, str], list[Message]]] = {
    "sharegpt": _sharegpt, "alpaca": _alpaca, "openai": _openai, "chatml": _chatml,
    "text": lambda row, number, column: [],
}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _system_column(row: Mapping[str, Any], number: int) -> list[Message]:
    """An optional ``system`` column becomes the first message; empty means none."""
    system = row.get("system")
    if system is None or system == "":
        return []
    return [{"role": "system", "content": system}]


def _tools(row: Mapping[str, Any], number: int) -> list[dict[str, Any]] | None:
    """The row's ``tools`` column as a list (decoded from JSON text, as glaive stores it)."""
    tools = row.get("tools")
    if isinstance(tools, str):
        if not tools.strip():
            return None
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise BackpropagateError(
                "INPUT_INVALID_JSON", f"row {number}: the `tools` column is not valid JSON ({exc.msg}).") from exc
        except RecursionError as exc:
            raise _bad_tools(number, "depth") from exc
        if (problem := tree_problem(tools)) is not None:
            raise _bad_tools(number, problem)
    if tools is None:
        return None
    if isinstance(tools, Mapping):
        tools = [tools]
    if not isinstance(tools, list):
        raise BackpropagateError(
            "INPUT_INVALID_TOOLS", f"row {number}: `tools` must be a list of tool schemas.")
    return agentic.tool_schemas(tools, number)


def _bad_tools(number: int, problem: str) -> BackpropagateError:
    if problem == "depth":
        return BackpropagateError("INPUT_INVALID_JSON",
                                  f"row {number}: the `tools` column nests deeper than {MAX_DEPTH} levels.")
    return BackpropagateError("INPUT_ENCODING_ERROR", f"row {number}: the `tools` column holds a lone UTF-16 "
                              "surrogate escape (such as \\ud800), which is not a character.")


def _row(rows: list[dict[str, Any]], index: int) -> Mapping[str, Any]:
    row = rows[index]
    if not isinstance(row, Mapping):
        raise BackpropagateError(
            "INPUT_INVALID_VALUE", f"row {index + 1} is {type(row).__name__}, expected a dict of columns.")
    return row


def _keys(row: Mapping[str, Any]) -> str:
    keys = [str(key) if value is not None else f"{key} (null)" for key, value in row.items()]
    return ", ".join(keys) if keys else "(none)"


# The keys a format is recognised by, and the JSON type each must hold.
_FORMAT_KEYS = {"conversations": list, "messages": list, "instruction": str}


def _describe(row: Mapping[str, Any], column: str) -> str:
    """Why a row fits no format: a format's key holding the wrong type (null, most often), else its keys."""
    expected = {column: str, **_FORMAT_KEYS}
    for key, kind in expected.items():
        if key in row and not isinstance(row[key], kind):
            what = "a string" if kind is str else "a list"
            return f"its `{key}` value is {_type_name(row[key])}, expected {what}; its keys: {_keys(row)}"
    return f"its keys: {_keys(row)}{_near_key(row, column)}"


#: The keys the formats read, for "did you mean": a misspelled one is the usual reason a row fits none.
_KNOWN_KEYS = ("conversations", "messages", "instruction", "input", "output", "system", "history", "tools", "text")


def _near_key(row: Mapping[str, Any], column: str) -> str:
    """A note on the first key that is a near miss of a known one (`ouput` for `output`), else ""."""
    known = (*_KNOWN_KEYS, column)
    for key in row:
        if isinstance(key, str) and key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
            if close:
                return f"; `{key}` looks like a misspelled `{close[0]}`"
    return ""


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
