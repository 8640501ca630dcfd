"""What Ollama reads from a TEMPLATE's shape, besides rendering it: the tool-call prefix and thinking tags.

Ollama offers tools for a model whose TEMPLATE mentions ``.Tools``; it finds the text that starts a tool
call in the model's answers from the first ``if`` whose condition names the ``.ToolCalls`` field (the
first text of its body, up to a ``{``), and offers thinking when it finds the thinking tags: the first and
last texts of the block holding ``.Thinking`` inside a ``range`` over ``.Messages``. A TEMPLATE that renders
right but breaks those shapes would make Ollama parse answers wrongly, so the export checks them with these
re-implementations (of Ollama's tools/template.go ``parseTag`` and thinking/template.go ``InferTags``) on
the tree :mod:`.gotemplate` parses.
"""

from __future__ import annotations

from .gotemplate import TemplateNode, action_tokens, lex, parse_nodes


def _top_fields(expr: str | None) -> list[str]:
    """The field terms (``.A.B``) that are direct arguments of a condition's command (not in parentheses)."""
    if not expr:
        return []
    depth, fields = 0, []
    for tok in action_tokens(expr):
        depth += {"(": 1, ")": -1}.get(tok.text, 0)
        if depth == 0 and tok.text.startswith(".") and tok.text != ".":
            fields.append(tok.text)
    return fields


def _tool_calls_if(nodes: list[TemplateNode]) -> list[TemplateNode] | None:
    """The body of the first ``if`` (or ``else if``) testing ``.ToolCalls``, in Ollama's search order."""
    for node in nodes:
        if node.kind == "if":
            for cond, body in node.branches:
                if any("ToolCalls" in f[1:].split(".") for f in _top_fields(cond)):
                    return body
                found = _tool_calls_if(body)
                if found is not None:
                    return found
        elif node.kind == "range":
            found = _tool_calls_if(node.body)
            if found is not None:
                return found
    return None


def _first_text(nodes: list[TemplateNode]) -> str | None:
    """Ollama's findTextNode: the first text, looking into ifs and ranges, stopping at any other action."""
    for node in nodes:
        if node.kind == "text":
            return node.text
        if node.kind == "if":
            for _, body in node.branches:
                text = _first_text(body)
                if text is not None:
                    return text
            return None
        if node.kind == "range":
            return _first_text(node.body)
        return None
    return None


def tool_call_prefix(template: str) -> str | None:
    """The text Ollama expects before a tool call in an answer ("" for bare JSON), None if it finds none."""
    body = _tool_calls_if(parse_nodes(lex(template))[0])
    text = None if body is None else _first_text(body)
    return None if text is None else text.strip().split("{")[0]


Tags = list[tuple[str | None, str | None]]


def _thinking_refs(nodes: list[TemplateNode], in_messages: bool, tags: Tags) -> None:
    """Visit like InferTags: each ``.Thinking`` field under a range over ``.Messages`` sets the tags from
    the first and last nodes of the list that holds it (each only when that node is a text)."""
    def from_list() -> tuple[str | None, str | None]:
        first, last = nodes[0], nodes[-1]
        return (first.text.strip() if first.kind == "text" else None,
                last.text.strip() if last.kind == "text" else None)

    for node in nodes:
        if node.kind in ("out", "set", "assign") and in_messages and _names_thinking(node.expr):
            tags.append(from_list())
        elif node.kind == "if":
            for cond, body in node.branches:
                if in_messages and _names_thinking(cond):
                    tags.append(from_list())
                if body:
                    _thinking_refs(body, in_messages, tags)
        elif node.kind == "range":
            uses_messages = any(f[1:].split(".")[0] == "Messages" for f in _all_fields(node.expr))
            if node.body:
                _thinking_refs(node.body, uses_messages, tags)


def _all_fields(expr: str | None) -> list[str]:
    return [t.text for t in action_tokens(expr or "") if t.text.startswith(".") and t.text != "."]


def _names_thinking(expr: str | None) -> bool:
    return any(f[1:].split(".")[0] == "Thinking" for f in _all_fields(expr))


def thinking_tags(template: str) -> tuple[str, str]:
    """The (opening, closing) thinking tags Ollama infers; ("", "") when it finds none (no thinking)."""
    tags: Tags = []
    _thinking_refs(parse_nodes(lex(template))[0], False, tags)
    opening = next((o for o, _ in reversed(tags) if o is not None), "")
    closing = next((c for _, c in reversed(tags) if c is not None), "")
    return opening, closing
