"""Each option's default is written once, in its declaration (``config.option``): a parameter, dataclass field or
CLI option elsewhere that has an option's name must not repeat its default as a literal; it reads the
declaration (``config.declared_default``) or takes the value from the caller."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from backpropagate.config import OPTION_GROUPS, declared_default

SOURCE = Path(__file__).resolve().parents[1] / "src" / "backpropagate"
DECLARED = {name: info.default for model in OPTION_GROUPS.values() for name, info in model.model_fields.items()}


def _literal(node: ast.expr | None) -> Any:
    """The literal a default is written as (also the first argument of ``typer.Option(...)``), else None."""
    if isinstance(node, ast.Call) and node.args:
        node = node.args[0]
    return node.value if isinstance(node, ast.Constant) else None


def _defaults(tree: ast.AST) -> list[tuple[str, int, Any]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            positional = node.args.posonlyargs + node.args.args
            pairs = list(zip(positional[len(positional) - len(node.args.defaults):], node.args.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True) if d is not None]
            found += [(a.arg, node.lineno, _literal(d)) for a, d in pairs]
        elif isinstance(node, ast.ClassDef):
            found += [(s.target.id, s.lineno, _literal(s.value)) for s in node.body
                      if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and s.value is not None]
    return found


def copies() -> list[str]:
    out = []
    for path in sorted(SOURCE.rglob("*.py")):
        if path.name == "config.py":
            continue
        for name, line, value in _defaults(ast.parse(path.read_text(encoding="utf-8"))):
            declared = DECLARED.get(name)
            if (name in DECLARED and value is not None and not isinstance(value, bool)
                    and type(value) is type(declared) and value == declared):
                out.append(f"{path.relative_to(SOURCE)}:{line}: {name}={value!r} repeats the declared default")
    return out


def test_no_option_default_is_written_twice() -> None:
    assert not copies(), "\n".join(copies())


def test_the_check_sees_a_copy() -> None:
    tree = ast.parse("def f(max_seq_length: int = 2048, seed=7):\n    pass\n"
                     "class C:\n    warmup_ratio: float = 0.03\n")
    seen = {(name, value) for name, _, value in _defaults(tree)}
    assert ("max_seq_length", 2048) in seen and ("warmup_ratio", 0.03) in seen
    assert declared_default("max_seq_length") == DECLARED["max_seq_length"] == 2048
