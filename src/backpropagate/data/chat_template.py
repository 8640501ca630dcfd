"""What a chat template can write (tool calls, tool results, tool schemas, reasoning), and the one fallback
for what it cannot.

Each trait is found by rendering a probe conversation with the model's own template, never guessed from its
name. Where a template has its own format, conversations are handed to it unchanged. Where it has none, one
documented fallback is used, so nothing the dataset holds is silently dropped:

- tool calls: appended to the assistant text as ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``
  (the Hermes / Qwen format, one block per call);
- tool results: a user turn of ``<tool_response>\\n...\\n</tool_response>`` blocks;
- tool schemas: listed in the system prompt between ``<tools>`` and ``</tools>`` (with the call format above
  when the template has none of its own);
- reasoning of the turns that answer the last user message: an inline ``<think>\\n...\\n</think>\\n\\n`` prefix,
  unless the template's generation prompt opens ``<think>`` itself (DeepSeek-R1 distills), in which case the
  reasoning is written where the model will write it, after that prompt (see :mod:`.templates`).
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from ..errors import BackpropagateError
from .formats import Conversation, Message

_CALL = {"type": "function", "id": "a1B2c3D4e",
         "function": {"name": "probe_tool_fn", "arguments": {"probe_arg": "probe_value_7"}}}
_SCHEMA = {"type": "function", "function": {"name": "probe_tool_fn", "description": "PROBE_SCHEMA_DESCRIPTION",
                                            "parameters": {"type": "object", "properties": {
                                                "probe_arg": {"type": "string", "description": "an argument"}},
                                                "required": ["probe_arg"]}}}
_TOOL_TURNS: list[Message] = [
    {"role": "user", "content": "PROBE_QUESTION"},
    {"role": "assistant", "content": "", "tool_calls": [_CALL]},
    {"role": "tool", "content": "PROBE_TOOL_RESULT", "tool_call_id": "a1B2c3D4e", "name": "probe_tool_fn"},
    {"role": "assistant", "content": "PROBE_ANSWER"}]
_REASONING_TURNS: list[Message] = [
    {"role": "user", "content": "PROBE_QUESTION"},
    {"role": "assistant", "content": "PROBE_ANSWER", "reasoning_content": "PROBE_REASONING"}]
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
T = TypeVar("T")


def _try_render(tokenizer: Any, messages: list[Message], **kwargs: Any) -> str:
    """The probe's render, or "" when the template refuses it (that trait is then absent)."""
    try:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, **kwargs))
    except Exception:  # noqa: BLE001 - templates raise anything (TemplateError, TypeError, KeyError...)
        return ""


@dataclass(frozen=True)
class TemplateTraits:
    """What the chat template renders by itself; each False trait uses the module's documented fallback."""

    tool_calls: bool
    tool_results: bool
    tool_schemas: bool
    reasoning: bool
    think_opening: str  # what the thinking generation prompt writes from <think> on ("<think>\n"), or ""
    needs_tools: bool = False  # the template iterates `tools` even when there are none (Hermes' tool_use)

    @property
    def think_prompt(self) -> bool:
        """The generation prompt opens ``<think>``: the model starts its reasoning from there."""
        return bool(self.think_opening)

    @property
    def thinking(self) -> bool:
        """A thinking model: its template shows reasoning, or its generation prompt opens ``<think>``."""
        return self.reasoning or self.think_prompt

    def fallbacks(self) -> list[str]:
        """One line per fallback in use, for the start-up log and the data report."""
        lines = []
        if not self.tool_calls:
            lines.append("the chat template has no tool-call format: tool calls are written as "
                         "<tool_call>{json}</tool_call> text in the assistant turn")
        if not self.tool_results:
            lines.append("the chat template has no tool role: tool results are written as a user turn of "
                         "<tool_response> blocks")
        if not self.tool_schemas:
            lines.append("the chat template does not render `tools`: the schemas are listed in the system prompt")
        if not self.thinking:
            lines.append("the chat template has no reasoning format: reasoning is written as a <think>...</think> "
                         "prefix of the answer")
        return lines


_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[str, Any], Any]] = weakref.WeakKeyDictionary()


def once_per_template(tokenizer: Any, key: str, compute: Callable[[Any], T]) -> T:
    """``compute(tokenizer)``, kept while the tokenizer and its chat template are the same (probes render the
    template and read the vocabulary, which costs far more than rendering one row)."""
    slot = (key, getattr(tokenizer, "chat_template", None))
    try:
        cached = _CACHE.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: compute every time
        return compute(tokenizer)
    if slot not in cached:
        cached[slot] = compute(tokenizer)
    return cast(T, cached[slot])


def template_traits(tokenizer: Any) -> TemplateTraits:
    """The traits of the tokenizer's chat template, probed once per tokenizer and template."""
    return once_per_template(tokenizer, "traits", _probe)


def _probe(tokenizer: Any) -> TemplateTraits:
    with_tools = _try_render(tokenizer, _TOOL_TURNS, tools=[_SCHEMA])
    plain = _try_render(tokenizer, _TOOL_TURNS) or with_tools  # some templates need `tools` (Hermes)
    calls_only = plain or _try_render(tokenizer, _TOOL_TURNS[:2]) or _try_render(
        tokenizer, _TOOL_TURNS[:2], tools=[_SCHEMA])
    with_tools = with_tools or _try_render(tokenizer, _TOOL_TURNS[:1], tools=[_SCHEMA])
    question = _REASONING_TURNS[:1]
    needs_tools = not _try_render(tokenizer, question) and bool(_try_render(tokenizer, question, tools=[]))
    extra: dict[str, Any] = {"tools": []} if needs_tools else {}
    prompt = _try_render(tokenizer, question, add_generation_prompt=True, enable_thinking=True, **extra)
    history = _try_render(tokenizer, question, **extra)
    opened = prompt[len(history):] if prompt.startswith(history) else prompt
    return TemplateTraits(
        tool_calls="probe_value_7" in calls_only, tool_results="PROBE_TOOL_RESULT" in plain,
        tool_schemas="PROBE_SCHEMA_DESCRIPTION" in with_tools,
        reasoning="PROBE_REASONING" in _try_render(tokenizer, _REASONING_TURNS, **extra),
        think_opening=opened[opened.index(THINK_OPEN):] if THINK_OPEN in opened else "", needs_tools=needs_tools)


def call_text(calls: list[dict[str, Any]]) -> str:
    """The fallback text of an assistant turn's tool calls."""
    return "\n".join("<tool_call>\n" + json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                                                  ensure_ascii=False) + "\n</tool_call>" for c in calls)


def schemas_text(tools: list[dict[str, Any]], *, how: bool = True) -> str:
    """The fallback system-prompt text listing the tool schemas (``how``: and the fallback call format)."""
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    text = f"You can call these tools:\n<tools>\n{listed}\n</tools>"
    if how:
        text += '\nTo call one, reply with <tool_call>\n{"name": <tool name>, "arguments": <arguments object>}\n</tool_call>'
    return text


def last_query(messages: list[Message]) -> int:
    """Index of the last user message (-1 if none): the turns after it answer it, reasoning included."""
    return max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)


def _with_tool_fallbacks(messages: list[Message], traits: TemplateTraits) -> list[Message]:
    out: list[Message] = []
    for message in messages:
        message = dict(message)
        if message["role"] == "assistant" and message.get("tool_calls") and not traits.tool_calls:
            calls = message.pop("tool_calls")
            message["content"] = "\n".join(part for part in (message["content"], call_text(calls)) if part)
        elif message["role"] == "tool" and not traits.tool_results:
            block = f"<tool_response>\n{message['content']}\n</tool_response>"
            if out and out[-1].get("tool_fallback"):
                out[-1]["content"] += "\n" + block
                continue
            message = {"role": "user", "content": block, "tool_fallback": True}
        out.append(message)
    for message in out:
        message.pop("tool_fallback", None)
    return out


def _with_schemas(messages: list[Message], tools: list[dict[str, Any]], how: bool) -> list[Message]:
    text = schemas_text(tools, how=how)
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def template_messages(conversation: Conversation, traits: TemplateTraits) -> tuple[list[Message], list[dict[str, Any]] | None]:
    """The messages and ``tools`` handed to the template: fallbacks applied, reasoning kept on the turns that
    answer the last user message (the template may still drop it; :mod:`.templates` keeps the last one)."""
    messages = _with_tool_fallbacks(list(conversation.messages), traits)
    tools = conversation.tools or None  # an empty list is no tools (Llama 3.1 would announce an empty tool set)
    if tools and not traits.tool_schemas:
        messages, tools = _with_schemas(messages, tools, not traits.tool_calls), None
    if not tools and traits.needs_tools:
        tools = []
    final = last_query(messages)
    for index, message in enumerate(messages):
        thought = message.get("reasoning_content")
        if message["role"] != "assistant" or not thought:
            continue
        if not traits.reasoning:
            del message["reasoning_content"]
            if index > final and not traits.think_prompt:
                message["content"] = f"{THINK_OPEN}\n{thought}\n{THINK_CLOSE}\n\n{message['content']}"
    return messages, tools


def refuse(row: int | None, what: str, hint: str) -> BackpropagateError:
    where = f"row {row}: " if row is not None else ""
    return BackpropagateError("INPUT_TEMPLATE_MISMATCH", f"{where}{what}", hint=hint)
