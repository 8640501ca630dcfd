"""Tool calls, tool results and reasoning, normalized to the structure chat templates expect.

Datasets write agentic and reasoning turns in several ways (OpenAI ``tool_calls`` with arguments as JSON
text, glaive's ``function_call`` / ``observation`` turns, ``reasoning`` / ``thinking`` keys, an inline
``<think>`` prefix). Chat templates all read one shape, the one ``transformers`` documents: assistant
``tool_calls`` of ``{"type": "function", "id", "function": {"name", "arguments": {...}}}``, ``tool`` turns with
``tool_call_id`` and ``name``, reasoning in ``reasoning_content``, tools as ``{"type": "function",
"function": {...}}``. Everything is turned into that shape here, so the model's own template decides how it is
written, and malformed input is refused with the row and turn before any model loads.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from ..errors import BackpropagateError
from .validate import MAX_DEPTH, tree_problem

#: Keys popular datasets keep an assistant turn's reasoning under, in the order they are read.
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
_INLINE_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.S)
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

Message = dict[str, Any]


def _where(number: int, turn: int) -> str:
    return f"row {number}, turn {turn}"


def default_call_id(number: int, turn: int, index: int) -> str:
    """A stable 9-character alphanumeric id (the length Mistral's templates require) for a call without one."""
    digest = int.from_bytes(hashlib.sha256(f"{number}:{turn}:{index}".encode()).digest()[:8], "big")
    chars = []
    for _ in range(9):
        digest, rest = divmod(digest, len(_ID_ALPHABET))
        chars.append(_ID_ALPHABET[rest])
    return "".join(chars)


def _arguments(raw: Any, where: str, name: str) -> dict[str, Any]:
    """Arguments as an object: JSON text is decoded (templates index and ``tojson`` it), ``None`` is ``{}``."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise BackpropagateError(
                "INPUT_INVALID_TOOL_CALL",
                f"{where}: the arguments of the call to {name!r} are not valid JSON ({raw[:60]!r}).") from exc
    if (problem := tree_problem(raw)) is not None:
        detail = f"nest deeper than {MAX_DEPTH} levels" if problem == "depth" else "hold a lone UTF-16 surrogate"
        raise BackpropagateError("INPUT_INVALID_TOOL_CALL", f"{where}: the arguments of {name!r} {detail}.")
    if not isinstance(raw, Mapping):
        raise BackpropagateError(
            "INPUT_INVALID_TOOL_CALL",
            f"{where}: the arguments of the call to {name!r} are {type(raw).__name__}, expected a JSON object.")
    return dict(raw)


def tool_calls(raw: Any, number: int, turn: int) -> list[dict[str, Any]]:
    """An assistant turn's calls in the template shape; one call may be given bare instead of in a list."""
    where = _where(number, turn)
    calls = raw if isinstance(raw, list) else [raw]
    out = []
    for index, call in enumerate(calls):
        if not isinstance(call, Mapping):
            raise BackpropagateError("INPUT_INVALID_TOOL_CALL",
                                     f"{where}: tool call {index + 1} is {type(call).__name__}, expected an object.")
        fn: Mapping[str, Any] = call["function"] if isinstance(call.get("function"), Mapping) else call
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            raise BackpropagateError("INPUT_INVALID_TOOL_CALL", f"{where}: tool call {index + 1} has no function name.")
        call_id = call.get("id")
        out.append({"type": "function",
                    "id": call_id if isinstance(call_id, str) and call_id else default_call_id(number, turn, index),
                    "function": {"name": name, "arguments": _arguments(fn.get("arguments"), where, name)}})
    return out


def reasoning(item: Mapping[str, Any], content: str) -> tuple[str | None, str]:
    """(reasoning, answer): from the first reasoning key present, else from an inline ``<think>`` prefix."""
    for key in REASONING_KEYS:
        value = item.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip("\n"), content
    found = _INLINE_THINK.match(content)
    if found:
        return found.group(1).strip("\n"), content[found.end():]
    return None, content


def assistant(item: Mapping[str, Any], content: Any, number: int, turn: int) -> Message:
    """One assistant turn: content (text), plus ``tool_calls`` and ``reasoning_content`` only when present
    (Llama 3.1's and Hermes' templates test ``'tool_calls' in message``, so an empty key would change them)."""
    message: Message = {"role": "assistant", "content": "" if content is None else content}
    if isinstance(message["content"], str):
        thought, message["content"] = reasoning(item, message["content"])
        if thought:
            message["reasoning_content"] = thought
    calls = item.get("tool_calls")
    if calls:
        message["tool_calls"] = tool_calls(calls, number, turn)
    return message


def function_call_turn(value: Any, number: int, turn: int) -> Message:
    """A ShareGPT/glaive ``function_call`` turn (JSON text of ``{"name", "arguments"}`` or a list of them)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise BackpropagateError("INPUT_INVALID_TOOL_CALL",
                                     f"{_where(number, turn)}: the function_call is not valid JSON "
                                     f"({value[:60]!r}).") from exc
    return {"role": "assistant", "content": "", "tool_calls": tool_calls(value, number, turn)}


def link_tool_results(messages: list[Message], number: int) -> None:
    """Give every tool turn the ``tool_call_id`` and ``name`` of the call it answers (calls are answered in
    order); a tool turn with no call before it is refused."""
    pending: list[dict[str, Any]] = []
    seen_call = False
    for turn, message in enumerate(messages, start=1):
        if message["role"] == "assistant" and message.get("tool_calls"):
            pending = list(message["tool_calls"])
            seen_call = True
        elif message["role"] == "tool":
            if not seen_call:
                raise BackpropagateError(
                    "INPUT_TOOL_RESULT_WITHOUT_CALL",
                    f"{_where(number, turn)}: a tool result comes before any assistant tool call.")
            call = pending.pop(0) if pending else None
            if call is not None:
                message.setdefault("tool_call_id", call["id"])
                message.setdefault("name", call["function"]["name"])


def tool_message(item: Mapping[str, Any], content: Any) -> Message:
    """A tool result: JSON values become JSON text (templates print the content as it is)."""
    if isinstance(content, dict | list):
        content = json.dumps(content, ensure_ascii=False)
    message: Message = {"role": "tool", "content": content}
    for key in ("tool_call_id", "name"):
        if isinstance(item.get(key), str) and item[key]:
            message[key] = item[key]
    return message


def tool_schemas(tools: list[Any], number: int) -> list[dict[str, Any]]:
    """The ``tools`` column as ``{"type": "function", "function": {...}}`` entries, each with a name."""
    out = []
    for index, tool in enumerate(tools, start=1):
        fn = tool.get("function") if isinstance(tool, Mapping) and isinstance(tool.get("function"), Mapping) else tool
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
            raise BackpropagateError("INPUT_INVALID_TOOLS",
                                     f"row {number}: entry {index} of `tools` has no function name.")
        out.append({"type": "function", "function": dict(fn)})
    return out
