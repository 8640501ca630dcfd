"""A small evaluator for the subset of Go's text/template that Ollama TEMPLATEs use.

Ollama renders prompts with Go templates, the model was trained on a Jinja chat template; nothing runs
both here, so a translated TEMPLATE could silently drift. This evaluator lets the export render its own
TEMPLATE for probe conversations and compare the text with ``apply_chat_template`` before writing the
Modelfile. It covers what our templates use, with Go's semantics: ``{{- `` / `` -}}`` trim markers,
``if``/``else if``/``else``/``end``, ``range`` (over lists, and over maps in sorted key order, as Go does),
``$v := x`` and ``$v = x`` (scoped to the enclosing block, assignment reaching outer variables), fields
(``.Role``, ``$.Messages``, ``$m.Function.Name``, ``(index $l 1).Role``), string/int literals, parentheses,
Go's functions ``eq ne lt le gt ge and or not len slice index printf`` (``and``/``or`` stop at the first
deciding argument, as Go 1.18+ does) and Ollama's ``json`` and ``currentDate`` (today as YYYY-MM-DD, any
format argument ignored, as Ollama does). Values print and encode as Go would (:mod:`.gojson`). Anything
else raises ``ValueError``, as does what Go refuses (an unknown struct field, an index out of range,
comparing a string with a number).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from .gojson import GoStruct, go_json, go_print, go_printf

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|`[^`]*`|-?\d+|\$?[\w.]*[\w$]|\$|\.)')
_WS = " \t\r\n"
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"'}


@dataclass
class TemplateNode:
    kind: str  # text | out | if | range | set | assign
    text: str = ""
    expr: str = ""
    names: tuple[str, ...] = ()
    branches: list[tuple[str | None, list[TemplateNode]]] = field(default_factory=list)
    body: list[TemplateNode] = field(default_factory=list)


def lex(template: str) -> list[tuple[str, str]]:
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


def _block_end(items: list[tuple[str, str]], pos: int, what: str) -> None:
    if pos >= len(items) or items[pos][1] != "end":
        raise ValueError(f"{what} without a matching {{{{ end }}}}")


def _parse_if(items: list[tuple[str, str]], pos: int, value: str) -> tuple[TemplateNode, int]:
    node = TemplateNode("if")
    cond: str | None = value[2:].strip()
    while True:
        body, pos = parse_nodes(items, pos + 1, ("end",))
        node.branches.append((cond, body))
        if pos >= len(items):
            raise ValueError("if without a matching {{ end }}")
        action = items[pos][1]
        if action == "end":
            return node, pos + 1
        if cond is None:
            raise ValueError("{{ else }} after {{ else }}")
        cond = action[len("else if"):].strip() if action.startswith("else if") else None


def _parse_range(items: list[tuple[str, str]], pos: int, value: str) -> tuple[TemplateNode, int]:
    head = re.fullmatch(r"range\s+(?:(\$\w+)\s*(?:,\s*(\$\w+)\s*)?:=\s*)?(.+)", value, re.S)
    if head is None:
        raise ValueError(f"unsupported range: {value!r}")
    body, pos = parse_nodes(items, pos + 1, ("end",))
    _block_end(items, pos, "range")
    names = tuple(name for name in (head[1], head[2]) if name)
    return TemplateNode("range", names=names, expr=head[3], body=body), pos + 1


def parse_nodes(items: list[tuple[str, str]], pos: int = 0, stop: tuple[str, ...] = ()) -> tuple[list[TemplateNode], int]:
    nodes: list[TemplateNode] = []
    while pos < len(items):
        kind, value = items[pos]
        if kind == "text":
            nodes.append(TemplateNode("text", text=value))
            pos += 1
            continue
        word = value.split(None, 1)[0] if value else ""
        if word in stop or value.startswith("else"):
            return nodes, pos
        if word == "if":
            node, pos = _parse_if(items, pos, value)
        elif word == "range":
            node, pos = _parse_range(items, pos, value)
        elif match := re.fullmatch(r"(\$\w+)\s*(:?=)\s*(.+)", value, re.S):
            node, pos = TemplateNode("set" if match[2] == ":=" else "assign", names=(match[1],), expr=match[3]), pos + 1
        elif word in ("end", "with", "define", "template", "block", "break", "continue") or word.startswith("/*"):
            raise ValueError(f"unsupported action {{{{ {value} }}}}")
        else:
            node, pos = TemplateNode("out", expr=value), pos + 1
        nodes.append(node)
    if stop:
        raise ValueError("template ends inside a block (missing {{ end }})")
    return nodes, pos


def _truthy(value: Any) -> bool:
    """Go's truth: false, 0, nil and empty strings, slices and maps are false; a struct is true."""
    return True if isinstance(value, GoStruct) else bool(value)


def _field(value: Any, path: list[str]) -> Any:
    for name in path:
        if isinstance(value, GoStruct | dict):  # a struct field, or a map key (missing: the zero value, nil)
            value = value.get(name)
        else:
            raise ValueError(f"can't evaluate field {name} of {type(value).__name__}")
    return value


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    raise ValueError(f"can't compare {type(value).__name__} values")


def _compare(op: Callable[[Any, Any], bool]) -> Callable[..., bool]:
    """Go's comparison functions: both arguments of one basic kind, else an error."""
    def compare(a: Any, b: Any) -> bool:
        if _kind(a) != _kind(b):
            raise ValueError(f"incompatible types for comparison: {a!r} and {b!r}")
        return op(a, b)
    return compare


def _eq(a: Any, *others: Any) -> bool:
    """``eq a b c`` is ``a == b || a == c``, as in Go."""
    if not others:
        raise ValueError("eq needs at least two arguments")
    return any(_compare(lambda x, y: x == y)(a, b) for b in others)


def _len(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8"))  # Go counts bytes
    if isinstance(value, list | dict):
        return len(value)
    raise ValueError(f"len of {type(value).__name__}")


def _slice(value: Any, *bounds: int) -> Any:
    """Go's ``slice x i j``: bounds outside 0 <= i <= j <= len(x) are an error, not clamped."""
    size = len(value.encode("utf-8")) if isinstance(value, str) else len(value)
    i, j = (bounds + (size,))[:2] if bounds else (0, size)
    if not 0 <= i <= j <= size:
        raise ValueError(f"slice bounds out of range [{i}:{j}] with length {size}")
    return value.encode("utf-8")[i:j].decode("utf-8") if isinstance(value, str) else value[i:j]


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and isinstance(key, int) and not isinstance(key, bool):
            if not 0 <= key < len(value):
                raise ValueError(f"index out of range: {key}")
            value = value[key]
        else:
            raise ValueError(f"can't index {type(value).__name__} with {key!r}")
    return value


_FUNCS: dict[str, Callable[..., Any]] = {
    "eq": _eq, "ne": _compare(lambda a, b: a != b), "lt": _compare(lambda a, b: a < b),
    "le": _compare(lambda a, b: a <= b), "gt": _compare(lambda a, b: a > b), "ge": _compare(lambda a, b: a >= b),
    "not": lambda a: not _truthy(a), "len": _len, "slice": _slice, "index": _index, "json": go_json,
    "printf": go_printf, "currentDate": lambda *_: date.today().isoformat(),
}
_LAZY = ("and", "or")


@dataclass(frozen=True)
class _Tok:
    text: str
    start: int
    end: int


def action_tokens(expr: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(expr) and expr[pos:].strip():
        match = _TOKEN.match(expr, pos)
        if match is None or not match.group(1):
            raise ValueError(f"unsupported expression: {expr!r}")
        toks.append(_Tok(match.group(1), match.start(1), match.end(1)))
        pos = match.end()
    return toks


def _unquote(token: str) -> str:
    if token.startswith("`"):
        return token[1:-1]

    def escape(match: re.Match[str]) -> str:
        body = match.group(1)
        if body[0] in "xuU":
            return chr(int(body[1:], 16))
        if body not in _ESCAPES:
            raise ValueError(f"unsupported escape \\{body} in {token}")
        return _ESCAPES[body]
    return re.sub(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)", escape, token[1:-1])


class _Scope:
    """The root data, the current dot and a stack of variable frames (one per enclosing block)."""

    def __init__(self, root: Any, dot: Any, frames: list[dict[str, Any]]) -> None:
        self.root, self.dot, self.frames = root, dot, frames

    def inner(self, dot: Any, names: dict[str, Any] | None = None) -> _Scope:
        return _Scope(self.root, dot, [*self.frames, dict(names or {})])

    def declare(self, name: str, value: Any) -> None:
        self.frames[-1][name] = value

    def assign(self, name: str, value: Any) -> None:
        for frame in reversed(self.frames):
            if name in frame:
                frame[name] = value
                return
        raise ValueError(f"undefined variable {name}")

    def lookup(self, name: str) -> Any:
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        raise ValueError(f"undefined variable {name}")

    def eval(self, expr: str) -> Any:
        toks = action_tokens(expr)
        value, rest = self._command(toks)
        if rest:
            raise ValueError(f"unsupported expression: {expr!r}")
        return value

    def _command(self, toks: list[_Tok]) -> tuple[Any, list[_Tok]]:
        if toks and (toks[0].text in _FUNCS or toks[0].text in _LAZY):
            name, toks = toks[0].text, toks[1:]
            thunks = []
            while toks and toks[0].text != ")":
                start = toks
                toks = self._skip_term(toks)
                thunks.append(start[:len(start) - len(toks)])
            if name in _LAZY:
                return self._lazy(name, thunks), toks
            return _FUNCS[name](*(self._term(t)[0] for t in thunks)), toks
        return self._term(toks)

    def _lazy(self, name: str, thunks: list[list[_Tok]]) -> Any:
        """Go's and/or: evaluate left to right, stop at the first argument that decides."""
        if not thunks:
            raise ValueError(f"{name} needs arguments")
        value = None
        for thunk in thunks:
            value = self._term(thunk)[0]
            if _truthy(value) == (name == "or"):
                return value
        return value

    def _skip_term(self, toks: list[_Tok]) -> list[_Tok]:
        """The tokens after one term (a parenthesised group with its field chain counts as one)."""
        if toks[0].text != "(":
            return toks[1:]
        depth = 0
        for i, tok in enumerate(toks):
            depth += {"(": 1, ")": -1}.get(tok.text, 0)
            if depth == 0:
                rest = toks[i + 1:]
                if rest and rest[0].text.startswith(".") and rest[0].start == tok.end:
                    rest = rest[1:]
                return rest
        raise ValueError("unbalanced parentheses")

    def _term(self, toks: list[_Tok]) -> tuple[Any, list[_Tok]]:
        tok, rest = toks[0], toks[1:]
        text = tok.text
        if text == "(":
            value, rest = self._command(rest)
            if not rest or rest[0].text != ")":
                raise ValueError("unbalanced parentheses")
            close, rest = rest[0], rest[1:]
            if rest and rest[0].text.startswith(".") and rest[0].start == close.end:
                value, rest = _field(value, rest[0].text[1:].split(".")), rest[1:]
            return value, rest
        if text[0] in '"`':
            return _unquote(text), rest
        if re.fullmatch(r"-?\d+", text):
            return int(text), rest
        if text in ("true", "false"):
            return text == "true", rest
        if text == ".":
            return self.dot, rest
        if text.startswith("$"):
            name, _, path = text.partition(".")
            base = self.root if name == "$" else self.lookup(name)
            return (_field(base, path.split(".")) if path else base), rest
        if text.startswith("."):
            return _field(self.dot, text[1:].split(".")), rest
        raise ValueError(f"unsupported term {text!r}")


def _items(value: Any) -> list[tuple[Any, Any]]:
    """What ``range`` visits: (index, element) of a list, (key, value) of a map in sorted key order."""
    if value is None:
        return []
    if isinstance(value, list):
        return list(enumerate(value))
    if isinstance(value, dict):
        return [(key, value[key]) for key in sorted(value)]
    raise ValueError(f"range can't iterate over {type(value).__name__}")


def _run(nodes: list[TemplateNode], scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        if node.kind == "text":
            out.append(node.text)
        elif node.kind == "out":
            out.append(go_print(scope.eval(node.expr)))
        elif node.kind == "set":
            scope.declare(node.names[0], scope.eval(node.expr))
        elif node.kind == "assign":
            scope.assign(node.names[0], scope.eval(node.expr))
        elif node.kind == "if":
            for cond, body in node.branches:
                if cond is None or _truthy(scope.eval(cond)):
                    _run(body, scope.inner(scope.dot), out)
                    break
        elif node.kind == "range":
            for key, item in _items(scope.eval(node.expr)):
                names = dict(zip(node.names, (item,) if len(node.names) == 1 else (key, item), strict=False))
                _run(node.body, scope.inner(item, names), out)


def render(template: str, data: dict[str, Any]) -> str:
    """Render ``template`` with ``data`` as the root (``.System``, ``.Messages`` ...)."""
    nodes, _ = parse_nodes(lex(template))
    out: list[str] = []
    _run(nodes, _Scope(data, data, [{}]), out)
    return "".join(out)
