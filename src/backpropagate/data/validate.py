"""What a dataset value must be before anything else touches it: bounded nesting and real text.

``json.loads`` happily returns a list nested 900 levels deep (and raises ``RecursionError`` past
~1000), and decodes ``"\\ud800"`` to a lone UTF-16 surrogate that is no character: both pass the reader
and blow up far away (a recursion in a later walk, a ``UnicodeEncodeError`` in the tokenizer or a
writer, after the model has loaded). They are refused here, as ``INPUT_`` errors naming file and line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import BackpropagateError

__all__ = ["MAX_DEPTH", "checked_json", "has_surrogate", "tree_problem"]

#: Objects and arrays inside each other; real chat data uses about five.
MAX_DEPTH = 100
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# For locating a problem in JSON text: strings (skipped whole), brackets and newlines.
_JSON_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|[\[\]{}\n]')


def has_surrogate(text: str) -> bool:
    """A lone surrogate cannot be encoded to UTF-8, so no tokenizer or file can take the string."""
    return not text.isascii() and _SURROGATE.search(text) is not None


def tree_problem(value: Any, limit: int = MAX_DEPTH, *, depth: bool = True, text: bool = True) -> str | None:
    """``"depth"`` when containers nest deeper than ``limit``, ``"surrogate"`` for a string (or key) that
    is not text, else None; iterative, so it is safe on any depth. ``depth``/``text`` pick the checks."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, str):
            if text and has_surrogate(item):
                return "surrogate"
            continue
        if isinstance(item, Mapping):
            children: Iterable[Any] = [*item.keys(), *item.values()] if text else item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth and level > limit:
            return "depth"
        stack.extend((child, level + 1) for child in children
                     if text or isinstance(child, Mapping | list | tuple))
    return None


def checked_json(text: str, path: Path | str, line: int | None = None, column: str | None = None) -> Any:
    """``json.loads(text)``, refusing deep nesting (``INPUT_INVALID_JSON``) and lone surrogates
    (``INPUT_ENCODING_ERROR``); ``text`` starts at ``line`` of ``path``. Syntax errors pass through."""
    try:
        value = json.loads(text)
    except RecursionError as exc:
        raise _refusal("depth", text, path, line, column) from exc
    # Cheap tests on the text first (C speed); a walk of the value only where a problem is possible.
    if text.count("[") + text.count("{") > MAX_DEPTH and _deeper_than(text, MAX_DEPTH):
        raise _refusal("depth", text, path, line, column)
    if _SURROGATE_ESCAPE.search(text) and tree_problem(value, depth=False) is not None:
        raise _refusal("surrogate", text, path, line, column)
    return value


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"\[\]|\{\}")


def _deeper_than(text: str, limit: int) -> bool:
    """Whether valid JSON ``text`` nests deeper than ``limit``: strip strings and all but brackets, then peel
    one layer of innermost pairs per pass; a pass is a C-speed substitution, so no Python loop per value."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    for _ in range(limit):
        if not brackets:
            return False
        brackets = _INNERMOST.sub("", brackets)
    return bool(brackets)


def _refusal(problem: str, text: str, path: Path | str, line: int | None, column: str | None) -> BackpropagateError:
    offset = _problem_line(text, problem)
    where = f"{path} line {(line or 1) + offset - 1}" if offset or line else str(path)
    if column is not None:
        where += f", column {column!r}"
    if problem == "depth":
        return BackpropagateError(
            "INPUT_INVALID_JSON", f"{where}: JSON nested deeper than {MAX_DEPTH} levels.",
            hint=f"Flatten the value: rows nest objects and arrays at most {MAX_DEPTH} deep.")
    return BackpropagateError(
        "INPUT_ENCODING_ERROR", f"{where}: a string holds a lone UTF-16 surrogate escape (such as \\ud800), "
        "which is not a character and cannot be encoded as UTF-8.",
        hint="Fix the escape: a character outside the BMP is a pair such as \\ud83d\\ude00, or write it as UTF-8.")


def _problem_line(text: str, problem: str) -> int:
    """1-based line of ``text`` where the problem first shows (0 when not found); only run on the error path."""
    line, depth = 1, 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token == "\n":
            line += 1
        elif token in ("[", "{"):
            depth += 1
            if problem == "depth" and depth > MAX_DEPTH:
                return line
        elif token in ("]", "}"):
            depth -= 1
        elif problem == "surrogate" and "\\u" in token and _decodes_to_surrogate(token):
            return line
    return 0


def _decodes_to_surrogate(token: str) -> bool:
    try:
        return has_surrogate(json.loads(token))
    except ValueError:
        return False
