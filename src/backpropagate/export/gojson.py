"""Go's ways of writing a value, for :mod:`.gotemplate`: ``json`` (encoding/json.Marshal, which Ollama's
TEMPLATE function ``json`` calls), ``printf`` verbs (%q is strconv.Quote) and what ``{{ value }}`` prints.

A TEMPLATE is only trusted when its render equals the chat template's, so the text of each value has to be
Go's, not Python's: json.Marshal escapes ``<``, ``>`` and ``&`` (``\\u003c``), writes structs in field order
and maps with sorted keys, with no spaces; strconv.Quote keeps printable Unicode and escapes the rest.
Python ints stand for Go's ints (indexes, ``len``, literals) and floats for float64, which is what Go's
JSON decoding gives every number (:mod:`.ollama_data` converts); both write ``5`` for five.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class GoField:
    """One struct field: its Go name, its JSON key, and whether ``omitempty`` drops it when empty."""

    name: str
    key: str
    omitempty: bool = False


@dataclass
class GoStruct:
    """A Go struct value: template field access by Go name, json in field order, always true in ``if``."""

    type_name: str
    fields: tuple[GoField, ...]
    values: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        if not any(f.name == name for f in self.fields):
            raise ValueError(f"can't evaluate field {name} in type {self.type_name}")
        return self.values.get(name)


class PropertyType(list[str]):
    """Ollama's api.PropertyType (a []string): its MarshalJSON writes a single type as a bare string."""


def go_type(value: Any) -> str:
    """What Go's ``%T`` writes for a value decoded from JSON (or one of our structs)."""
    if isinstance(value, GoStruct):
        return value.type_name
    if isinstance(value, PropertyType):
        return "api.PropertyType"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"  # a template's own numbers (indexes, len, literals); decoded JSON numbers are floats
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return "<nil>"


def go_quote(text: str) -> str:
    """strconv.Quote: printable runes stay, ``"`` and ``\\`` are escaped, the rest as Go escapes."""
    out = ['"']
    short = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ch in short:
            out.append(short[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_JSON_SHORT = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _json_string(text: str) -> str:
    """encoding/json's string: HTML-safe (``<>&`` as \\u003c ...), U+2028/9 escaped, other Unicode kept."""
    out = ['"']
    for ch in text:
        if ch in _JSON_SHORT:
            out.append(_JSON_SHORT[ch])
        elif ord(ch) < 0x20 or ch in "<>&\u2028\u2029":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _json_number(value: int | float) -> str:
    """encoding/json's float64: plain decimals, exponent form only below 1e-6 or from 1e21 (e-7, not e-07)."""
    if value == int(value) and abs(value) < 1e21:
        return str(int(value))
    if abs(value) < 1e-6 or abs(value) >= 1e21:
        return re.sub(r"e([+-])0(\d)$", r"e\1\2", repr(float(value)))
    return format(Decimal(repr(float(value))), "f")


def go_json(value: Any) -> str:
    """json.Marshal of ``value`` (what Ollama's template function ``json`` returns)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _json_number(value)
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, PropertyType) and len(value) == 1:
        return _json_string(value[0])
    if isinstance(value, list):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    if isinstance(value, dict):  # a Go map: keys sorted
        return "{" + ",".join(f"{_json_string(k)}:{go_json(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, GoStruct):
        return _struct_json(value)
    raise ValueError(f"json: unsupported value {value!r}")


def _empty(value: Any) -> bool:
    return value is None or value is False or (not isinstance(value, GoStruct) and value in ("", 0, [], {}))


def _struct_json(value: GoStruct) -> str:
    parts = []
    for f in value.fields:
        item = value.values.get(f.name)
        if f.omitempty and _empty(item):
            continue
        parts.append(f"{_json_string(f.key)}:{go_json(item)}")
    return "{" + ",".join(parts) + "}"


def _float_text(value: float) -> str:
    """fmt's %v of a float64: shortest digits, exponent form (1e+06) from 1e6 up or below 1e-4."""
    number = Decimal(repr(value))
    exponent = number.adjusted()
    if -4 <= exponent < 6:
        return format(number, "f")
    digits = "".join(map(str, number.as_tuple().digits)).rstrip("0") or "0"
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{'-' if value < 0 else ''}{mantissa}e{exponent:+03d}"


def go_print(value: Any) -> str:
    """What ``{{ value }}`` writes: strings as they are, numbers and booleans as fmt's %v, nil as Go does."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value == int(value) and abs(value) < 1e6 else _float_text(value)
    if isinstance(value, str):
        return value
    raise ValueError(f"printing {go_type(value)} is not supported (Go would write its %v form)")


def go_printf(fmt: str, *args: Any) -> str:
    """fmt.Sprintf for the verbs the TEMPLATEs use: %q %s %v %d %T and %%."""
    out: list[str] = []
    rest = list(args)
    pos = 0
    for match in re.finditer(r"%(.)", fmt):
        out.append(fmt[pos:match.start()])
        pos = match.end()
        verb = match.group(1)
        if verb == "%":
            out.append("%")
            continue
        if not rest:
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = rest.pop(0)
        if verb == "q" and isinstance(arg, str):
            out.append(go_quote(arg))
        elif verb == "T":
            out.append(go_type(arg))
        elif verb in "svd":
            out.append(go_print(arg))
        else:
            raise ValueError(f"printf verb %{verb} is not supported for {go_type(arg)}")
    out.append(fmt[pos:])
    return "".join(out)
