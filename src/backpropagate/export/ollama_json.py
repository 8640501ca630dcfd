"""Go-template code that writes tool schemas and call arguments as Python's ``json.dumps`` does.

Chat templates write tools with Jinja's ``tojson`` (transformers': ``ensure_ascii=False``, separators
``", "``/``": "``, or ``indent=4`` for Llama 3.1+), while Ollama's only JSON function, ``json``, is Go's
json.Marshal: no spaces, ``<>&`` escaped as ``\\u003c``. So a TEMPLATE that must reproduce the chat
template writes the JSON itself, member by member, from these snippets:

- strings through ``printf "%q"`` (strconv.Quote: same text as ``json.dumps(ensure_ascii=False)`` for
  printable text, newlines, tabs and quotes; control and non-printable characters differ);
- numbers, booleans and null through ``json`` (``5``, ``true``; a float such as ``1e-05`` differs);
- lists of such values and one level of objects; anything deeper falls back to ``json`` (no spaces);
- a tool as ``{"type", "function": {"name", "description", "parameters": {"type", "properties",
  "required"}}}`` and each property as ``{"type", "items", "enum", "description"}`` (the order of
  transformers' ``get_json_schema``). Ollama hands properties and arguments to templates as Go maps,
  so their keys come out sorted: a schema or a call whose keys are not in sorted order renders differently,
  as do schema keys Ollama does not keep (``return``, ``nullable``, ``default`` ...).

Every snippet is plain template text without trim markers, and no ``{`` is written right before an
action (Go would read ``{{{`` as an action starting with ``{``).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count

_IDS = count()


def _var(stem: str) -> str:
    """A fresh template variable name, so nested snippets never share one."""
    return f"${stem}{next(_IDS)}"


@dataclass(frozen=True)
class Style:
    """``indent=None``: one line (``, `` and ``: ``); ``indent=n``: json.dumps(indent=n) (``,`` + newline)."""

    indent: int | None = None

    def open(self, bracket: str, depth: int) -> str:
        return bracket if self.indent is None else bracket + "\n" + " " * (self.indent * (depth + 1))

    def sep(self, depth: int) -> str:
        return ", " if self.indent is None else ",\n" + " " * (self.indent * (depth + 1))

    def close(self, bracket: str, depth: int) -> str:
        return bracket if self.indent is None else "\n" + " " * (self.indent * depth) + bracket


INLINE = Style()
INDENT4 = Style(4)
_BRACE = '{{ "{" }}'  # an opening brace written by an action, so it never touches the next "{{"


def quoted(expr: str) -> str:
    """A Go string as a JSON string (strconv.Quote, which does not HTML-escape as ``json`` does)."""
    return f'{{{{ printf "%q" {expr} }}}}'


def _sub(expr: str, name: str) -> str:
    """The field ``name`` of ``expr`` (``.`` itself gives ``.Name``)."""
    return f".{name}" if expr == "." else f"{expr}.{name}"


def _is(expr: str, go_type: str) -> str:
    return f'(eq (printf "%T" {expr}) "{go_type}")'


def scalar(expr: str) -> str:
    """A decoded JSON scalar: strings quoted, numbers, booleans and null as ``json`` writes them."""
    return f'{{{{ if {_is(expr, "string")} }}}}{quoted(expr)}{{{{ else }}}}{{{{ json {expr} }}}}{{{{ end }}}}'


def _container(expr: str, style: Style, depth: int, opening: str, closing: str, member: str, sep: str,
               head: str) -> str:
    """``opening member, member ... closing`` over ``range head``; an empty one as ``[]``/``{}``."""
    inner = (f"{{{{ {sep} := \"\" }}}}{{{{ range {head} }}}}{{{{ {sep} }}}}{member}"
             f"{{{{ {sep} = {_go_string(style.sep(depth))} }}}}{{{{ end }}}}")
    if style.indent is None:
        return (_BRACE if opening == "{" else opening) + inner + closing
    return (f"{{{{ if {expr} }}}}{style.open(opening, depth)}{inner}{style.close(closing, depth)}"
            f"{{{{ else }}}}{opening}{closing}{{{{ end }}}}")


def _go_string(text: str) -> str:
    """``text`` as a Go string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def value(expr: str, style: Style, depth: int) -> str:
    """A decoded JSON value: a scalar, a list of scalars, or an object of scalars (keys sorted)."""
    item, key, val = _var("e"), _var("k"), _var("v")
    as_list = _container(expr, style, depth, "[", "]", scalar(item), _var("s"), f"{item} := {expr}")
    as_map = _container(expr, style, depth, "{", "}", f"{quoted(key)}: {scalar(val)}", _var("s"),
                        f"{key}, {val} := {expr}")
    return (f'{{{{ if {_is(expr, "[]interface {}")} }}}}{as_list}'
            f'{{{{ else if {_is(expr, "map[string]interface {}")} }}}}{as_map}'
            f"{{{{ else }}}}{scalar(expr)}{{{{ end }}}}")


def arguments(expr: str, style: Style = INLINE, depth: int = 0) -> str:
    """A tool call's arguments (a Go map: keys sorted) as ``tojson`` writes that object."""
    key, val = _var("k"), _var("v")
    return _container(expr, style, depth, "{", "}", f"{quoted(key)}: {value(val, style, depth + 1)}",
                      _var("s"), f"{key}, {val} := {expr}")


def _members(members: list[tuple[str, str, str | None]], style: Style, depth: int) -> str:
    """``{"key": value, ...}``; a member with a condition is written only when it holds (never the first)."""
    out = [style.open("{", depth)]
    for n, (key, code, cond) in enumerate(members):
        text = (style.sep(depth) if n else "") + f'"{key}": {code}'
        out.append(f"{{{{ if {cond} }}}}{text}{{{{ end }}}}" if cond else text)
    out.append(style.close("}", depth))
    return "".join(out)


def _strings(expr: str, style: Style, depth: int) -> str:
    item = _var("e")
    return _container(expr, style, depth, "[", "]", quoted(item), _var("s"), f"{item} := {expr}")


def property_schema(expr: str, style: Style, depth: int) -> str:
    """One parameter (an api.ToolProperty) as ``{"type", "items", "enum", "description"}``."""
    item, kinds, enums = _var("e"), _sub(expr, "Type"), _sub(expr, "Enum")
    enum = _container(enums, style, depth + 1, "[", "]", scalar(item), _var("s"), f"{item} := {enums}")
    kind = (f"{{{{ if eq (len {kinds}) 1 }}}}{{{{ json {kinds} }}}}{{{{ else }}}}"
            f"{_strings(kinds, style, depth + 1)}{{{{ end }}}}")
    return _members([("type", kind, None),
                     ("items", value(_sub(expr, "Items"), style, depth + 1), _sub(expr, "Items")),
                     ("enum", enum, _sub(expr, "Enum")),
                     ("description", quoted(_sub(expr, "Description")), _sub(expr, "Description"))], style, depth)


def parameters_schema(expr: str, style: Style, depth: int) -> str:
    """A tool's parameters as ``{"type", "properties", "required"}`` (properties in sorted order)."""
    key, prop, properties = _var("k"), _var("p"), _sub(expr, "Properties")
    props = _container(properties, style, depth + 1, "{", "}",
                       f"{quoted(key)}: {property_schema(prop, style, depth + 2)}", _var("s"),
                       f"{key}, {prop} := {properties}")
    return _members([("type", quoted(_sub(expr, "Type")), None), ("properties", props, None),
                     ("required", _strings(_sub(expr, "Required"), style, depth + 1), _sub(expr, "Required"))],
                    style, depth)


def function_schema(expr: str, style: Style, depth: int) -> str:
    """A tool's function as ``{"name", "description", "parameters"}``."""
    return _members([("name", quoted(_sub(expr, "Name")), None),
                     ("description", quoted(_sub(expr, "Description")), _sub(expr, "Description")),
                     ("parameters", parameters_schema(_sub(expr, "Parameters"), style, depth + 1), None)], style, depth)


def tool_schema(expr: str, style: Style = INLINE, depth: int = 0) -> str:
    """A whole tool, ``{"type": "function", "function": {...}}``, as ``tool | tojson`` writes it."""
    return _members([("type", quoted(_sub(expr, "Type")), None),
                     ("function", function_schema(_sub(expr, "Function"), style, depth + 1), None)], style, depth)
