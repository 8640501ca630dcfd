"""A small evaluator for the subset of Go's text/template that Ollama TEMPLATEs use.

Ollama renders prompts with Go templates, the model was trained on a Jinja chat template; nothing runs
both here, so a translated TEMPLATE could silently drift. This evaluator lets the export render its own
TEMPLATE for probe conversations and compare the text with ``apply_chat_template`` before writing the
Modelfile. It covers exactly what our templates use, with Go's semantics: ``{{- `` / `` -}}`` trim
markers, ``if``/``else if``/``else``/``end``, ``range $i, $_ := pipeline``, ``$var := pipeline``, fields
(``.Role``, ``$.Messages``), string/int literals, parentheses, Go's functions ``eq ne lt le gt ge and or
not len slice`` and Ollama's ``currentDate`` (today as YYYY-MM-DD, any format argument ignored, as Ollama
does). Anything else raises ``ValueError``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TERM = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|-?\d+|\$?[\w.]*[\w$]|\$|\.)')
_WS = " \t\r\n"


@dataclass
class _Node:
    kind: str  # text | out | if | range | set
    text: str = ""
    expr: str = ""
    names: tuple[str, ...] = ()
    branches: list[tuple[str | None, list[_Node]]] = field(default_factory=list)
    body: list[_Node] = field(default_factory=list)


def _lex(template: str) -> list[tuple[str, str]]:
    """('text', s) and ('action', s) items with trim markers already applied to the texts."""
    items: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for match in _ACTION.finditer(template):
        text = template[pos:match.start()]
        if trim_next:
            text = text.lstrip(_WS)
        if match.group(1):
            text = text.rstrip(_WS)
        items.append(("text", text))
        items.append(("action", match.group(2).strip()))
        trim_next = bool(match.group(3))
        pos = match.end()
    tail = template[pos:]
    items.append(("text", tail.lstrip(_WS) if trim_next else tail))
    return [item for item in items if item != ("text", "")]


def _parse(items: list[tuple[str, str]], pos: int = 0, stop: tuple[str, ...] = ()) -> tuple[list[_Node], int]:
    nodes: list[_Node] = []
    while pos < len(items):
        kind, value = items[pos]
        if kind == "text":
            nodes.append(_Node("text", text=value))
            pos += 1
            continue
        word = value.split(None, 1)[0] if value else ""
        if word in stop or value.startswith("else"):
            return nodes, pos
        if word == "if":
            node = _Node("if")
            cond: str | None = value[2:].strip()
            while True:
                body, pos = _parse(items, pos + 1, ("end",))
                node.branches.append((cond, body))
                action = items[pos][1]
                if action == "end":
                    break
                cond = action[len("else if"):].strip() if action.startswith("else if") else None
            nodes.append(node)
            pos += 1
        elif word == "range":
            head = re.fullmatch(r"range\s+(\$\w+)\s*,\s*(\$\w+)\s*:=\s*(.+)", value)
            if head is None:
                raise ValueError(f"unsupported range: {value!r}")
            body, pos = _parse(items, pos + 1, ("end",))
            nodes.append(_Node("range", names=(head[1], head[2]), expr=head[3], body=body))
            pos += 1
        elif re.fullmatch(r"\$\w+\s*:=.+", value):
            name, expr = value.split(":=", 1)
            nodes.append(_Node("set", names=(name.strip(),), expr=expr.strip()))
            pos += 1
        else:
            nodes.append(_Node("out", expr=value))
            pos += 1
    if stop:
        raise ValueError("template ends inside a block (missing {{ end }})")
    return nodes, pos


def _truthy(value: Any) -> bool:
    return bool(value)


def _field(value: Any, path: list[str]) -> Any:
    for name in path:
        value = value.get(name, "") if isinstance(value, dict) else getattr(value, name, "")
    return value


_FUNCS: dict[str, Callable[..., Any]] = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
    "not": lambda a: not _truthy(a), "len": len, "slice": lambda seq, i, j=None: seq[i:j],
    "currentDate": lambda *_: date.today().isoformat(),
    "and": lambda *a: next((x for x in a if not _truthy(x)), a[-1]),
    "or": lambda *a: next((x for x in a if _truthy(x)), a[-1]),
}


class _Scope:
    def __init__(self, root: dict[str, Any], dot: Any, variables: dict[str, Any]) -> None:
        self.root, self.dot, self.vars = root, dot, variables

    def eval(self, expr: str) -> Any:
        tokens = [t for t in _TERM.findall(expr) if t]
        if re.sub(r"\s+", "", "".join(tokens)) != re.sub(r"\s+", "", expr):
            raise ValueError(f"unsupported expression: {expr!r}")
        value, rest = self._command(tokens)
        if rest:
            raise ValueError(f"unsupported expression: {expr!r}")
        return value

    def _command(self, tokens: list[str]) -> tuple[Any, list[str]]:
        if tokens and tokens[0] in _FUNCS:
            name, tokens = tokens[0], tokens[1:]
            args = []
            while tokens and tokens[0] != ")":
                arg, tokens = self._term(tokens)
                args.append(arg)
            return _FUNCS[name](*args), tokens
        return self._term(tokens)

    def _term(self, tokens: list[str]) -> tuple[Any, list[str]]:
        token, rest = tokens[0], tokens[1:]
        if token == "(":
            value, rest = self._command(rest)
            if not rest or rest[0] != ")":
                raise ValueError("unbalanced parentheses")
            return value, rest[1:]
        if token.startswith('"'):
            return bytes(token[1:-1], "utf-8").decode("unicode_escape"), rest
        if re.fullmatch(r"-?\d+", token):
            return int(token), rest
        if token == ".":
            return self.dot, rest
        if token.startswith("$."):
            return _field(self.root, token[2:].split(".")), rest
        if token.startswith("$"):
            if token not in self.vars:
                raise ValueError(f"undefined variable {token}")
            return self.vars[token], rest
        if token.startswith("."):
            return _field(self.dot, token[1:].split(".")), rest
        raise ValueError(f"unsupported term {token!r}")


def _run(nodes: list[_Node], scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        if node.kind == "text":
            out.append(node.text)
        elif node.kind == "out":
            value = scope.eval(node.expr)
            out.append("" if value is None else str(value))
        elif node.kind == "set":
            scope.vars[node.names[0]] = scope.eval(node.expr)
        elif node.kind == "if":
            for cond, body in node.branches:
                if cond is None or _truthy(scope.eval(cond)):
                    _run(body, scope, out)
                    break
        elif node.kind == "range":
            for index, item in enumerate(scope.eval(node.expr) or []):
                inner = _Scope(scope.root, item, {**scope.vars, node.names[0]: index, node.names[1]: item})
                _run(node.body, inner, out)


def render(template: str, data: dict[str, Any]) -> str:
    """Render ``template`` with ``data`` as the root (``.System``, ``.Messages`` ...)."""
    nodes, _ = _parse(_lex(template))
    out: list[str] = []
    _run(nodes, _Scope(data, data, {"$": data}), out)
    return "".join(out)
