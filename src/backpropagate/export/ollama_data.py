"""What an Ollama TEMPLATE is given for a conversation written the way ``apply_chat_template`` takes it.

Modelled on Ollama's template package (template.go: ``collate`` and the template types it converts
messages and tools to) so a TEMPLATE can be rendered here for the same conversation as the chat template:

- ``.System``: every system turn joined by a blank line; ``.Messages``: the turns, system ones included,
  consecutive turns of one role merged into one (their contents joined by a blank line), tool turns never.
- each message: ``.Role .Content .Thinking .ToolCalls .ToolName .ToolCallID``; the HF ``reasoning_content``
  is Ollama's ``thinking``, a tool turn's ``name`` its ``tool_name``.
- each tool call: ``.ID`` and ``.Function`` with ``.Index .Name .Arguments``. Ollama hands ``Arguments`` to
  templates as a plain Go map, so ``range`` and ``json`` see its keys sorted, whatever order the request had.
- ``.Tools``: each with ``.Type`` and ``.Function`` (``.Name .Description .Parameters``); the parameters
  keep only the fields Ollama's structs have (``type $defs items required properties``; a property:
  ``anyOf type items description enum properties``), so schema keys Ollama drops are dropped here too.
- ``.Think``/``.IsThinkSet``: Ollama turns thinking on for a thinking-capable model when a request does
  not say (``think`` absent means Think=true, IsThinkSet=true); ``think=False`` gives Think=false.
"""

from __future__ import annotations

import json
from typing import Any

from .gojson import GoField, GoStruct, PropertyType

_MESSAGE = tuple(GoField(n, n.lower()) for n in ("Role", "Content", "Thinking", "Images", "ToolCalls", "ToolName",
                                                  "ToolCallID"))
_TOOL_CALL = (GoField("ID", "ID"), GoField("Function", "Function"))
_CALL_FUNCTION = (GoField("Index", "Index"), GoField("Name", "Name"), GoField("Arguments", "Arguments"))
_TOOL = (GoField("Type", "type"), GoField("Items", "items", True), GoField("Function", "function"))
_FUNCTION = (GoField("Name", "name"), GoField("Description", "description"), GoField("Parameters", "parameters"))
_PARAMETERS = (GoField("Type", "type"), GoField("Defs", "$defs", True), GoField("Items", "items", True),
               GoField("Required", "required", True), GoField("Properties", "properties"))
_PROPERTY = (GoField("AnyOf", "anyOf", True), GoField("Type", "type", True), GoField("Items", "items", True),
             GoField("Description", "description", True), GoField("Enum", "enum", True),
             GoField("Properties", "properties", True))


def _decoded(value: Any) -> Any:
    """A value as Go's encoding/json decodes it into ``any``: every number a float64 (a Python float here)."""
    if isinstance(value, dict):
        return {k: _decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _arguments(raw: Any) -> dict[str, Any]:
    """Tool-call arguments as Ollama holds them: a JSON object (a JSON string is decoded first)."""
    value = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(value, dict):
        raise ValueError(f"tool-call arguments must be a JSON object, not {value!r}")
    return _decoded(value)


def _tool_call(index: int, call: dict[str, Any]) -> GoStruct:
    function = call.get("function", call)
    fn = GoStruct("template.templateToolCallFunction", _CALL_FUNCTION,
                  {"Index": index, "Name": function.get("name", ""), "Arguments": _arguments(function.get("arguments", {}))})
    return GoStruct("template.templateToolCall", _TOOL_CALL, {"ID": call.get("id", ""), "Function": fn})


def _message(m: dict[str, Any]) -> GoStruct:
    calls = [_tool_call(i, c) for i, c in enumerate(m.get("tool_calls") or [])]
    return GoStruct("*template.templateMessage", _MESSAGE, {
        "Role": m["role"], "Content": m.get("content") or "", "Thinking": m.get("reasoning_content") or "",
        "Images": None, "ToolCalls": calls or None, "ToolName": m.get("name", "") if m["role"] == "tool" else "",
        "ToolCallID": m.get("tool_call_id", "")})


def _property(schema: dict[str, Any]) -> GoStruct:
    kind = schema.get("type")
    values = {
        "AnyOf": [_property(s) for s in schema["anyOf"]] if schema.get("anyOf") else None,
        "Type": PropertyType([kind] if isinstance(kind, str) else (kind or [])),
        "Items": _decoded(schema.get("items")), "Description": schema.get("description", ""),
        "Enum": _decoded(schema.get("enum")),
        "Properties": {k: _property(v) for k, v in schema["properties"].items()} if schema.get("properties") else None}
    return GoStruct("api.ToolProperty", _PROPERTY, values)


def _tool(tool: dict[str, Any]) -> GoStruct:
    function = tool.get("function", {})
    params = function.get("parameters") or {}
    parameters = GoStruct("template.templateToolFunctionParameters", _PARAMETERS, {
        "Type": params.get("type", ""), "Defs": _decoded(params.get("$defs")), "Items": _decoded(params.get("items")),
        "Required": params.get("required"),
        "Properties": {k: _property(v) for k, v in (params.get("properties") or {}).items()}})
    fn = GoStruct("template.templateToolFunction", _FUNCTION, {
        "Name": function.get("name", ""), "Description": function.get("description", ""), "Parameters": parameters})
    return GoStruct("template.templateTool", _TOOL, {"Type": tool.get("type", ""), "Items": _decoded(tool.get("items")),
                                                       "Function": fn})


def collate(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Ollama's ``collate``: the joined system text and the turns, same-role runs merged (tool turns kept)."""
    system = "\n\n".join(m.get("content") or "" for m in messages if m["role"] == "system")
    turns: list[dict[str, Any]] = []
    for m in messages:
        if turns and turns[-1]["role"] == m["role"] and m["role"] != "tool":
            turns[-1] = {**turns[-1], "content": (turns[-1].get("content") or "") + "\n\n" + (m.get("content") or "")}
        else:
            turns.append(m)
    return system, turns


def template_data(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                  think: bool | None = None, thinking_capable: bool = False) -> dict[str, Any]:
    """The root value Ollama executes a TEMPLATE with for a /api/chat request of ``messages`` and ``tools``."""
    if think is None and thinking_capable:
        think = True
    system, turns = collate(messages)
    return {"System": system, "Messages": [_message(m) for m in turns],
            "Tools": [_tool(t) for t in tools] if tools else None, "Response": "",
            "Think": bool(think), "ThinkLevel": "", "IsThinkSet": think is not None}
