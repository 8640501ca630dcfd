"""Architecture rules the code keeps (issue 18, part 7): no module reaches into another module's private names.

The rule, as this test reads it:

* A private name starts with one underscore (``_x``; dunders such as ``__init__`` are public protocol).
* ``obj._x`` is fine when ``obj`` is ``self`` or ``cls``, or when this same module defines ``_x`` (a module-level
  name, a class member, or an attribute it assigns on ``self``/``cls``): classes of one module may share their
  internals, e.g. ``ui/jobs.py``'s ``JobContext`` reading its ``JobRunner``'s ``_stop``. Anything else reaches
  into another module's, or a library's, internals (``trainer._load()``, ``sys._getframe()``).
* ``getattr(obj, "_x")`` / ``setattr`` / ``hasattr`` / ``delattr`` with a literal name count as ``obj._x``.
* ``from .mod import _x`` (a private name of another module) and importing a private module
  (``torch.utils._pytree``) are cross-module by definition.

``src/backpropagate`` and ``bench/`` (the benchmarks use only public API) are scanned. What remains is listed in
``ALLOWED`` with its reason; the list can only shrink: an entry that no longer occurs fails the test too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = (ROOT / "src" / "backpropagate", ROOT / "bench")
_ACCESSORS = {"getattr", "setattr", "hasattr", "delattr"}

#: Documented public API that happens to start with an underscore.
PUBLIC_ANYWAY = {"_asdict": "namedtuple API", "_replace": "namedtuple API", "_fields": "namedtuple API",
                 "_make": "namedtuple API"}

#: (file relative to the repository, private name) -> why it is still there. Only ever remove entries.
ALLOWED: dict[tuple[str, str], str] = {
    ("src/backpropagate/training/sharding.py", "_no_split_modules"):
        "transformers states a model's decoder-layer classes only there (accelerate's FSDP wrap reads it too)",
}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_names(tree: ast.Module) -> set[str]:
    """Private names this module defines: module level, class members, and ``self._x`` / ``cls._x`` stores."""
    names: set[str] = set()

    def body_names(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)

    body_names(tree.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            body_names(node.body)
        elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
              and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            names.add(node.attr)
    return {n for n in names if _private(n)}


def _accesses(tree: ast.Module) -> list[tuple[int, str, str]]:
    """(line, private name, source text) of every cross-module access in one module."""
    own = _own_names(tree)
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")) and node.attr not in own:
                found.append((node.lineno, node.attr, ast.unparse(node)))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _ACCESSORS
              and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str) and _private(node.args[1].value)
              and node.args[1].value not in own):
            found.append((node.lineno, node.args[1].value, ast.unparse(node)))
        elif isinstance(node, ast.ImportFrom):
            module_parts = [p for p in (node.module or "").split(".") if _private(p)]
            for alias in node.names:
                for name in [*module_parts, *([alias.name] if _private(alias.name) else [])]:
                    found.append((node.lineno, name, f"from {'.' * node.level}{node.module or ''} import {alias.name}"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found += [(node.lineno, p, f"import {alias.name}") for p in alias.name.split(".") if _private(p)]
    return [f for f in found if f[1] not in PUBLIC_ANYWAY]


def _scan() -> dict[tuple[str, str], list[str]]:
    hits: dict[tuple[str, str], list[str]] = {}
    for folder in SCANNED:
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for line, name, text in _accesses(ast.parse(path.read_text(encoding="utf-8"), filename=rel)):
                hits.setdefault((rel, name), []).append(f"{rel}:{line}: {text}")
    return hits


def test_no_cross_module_private_access() -> None:
    hits = _scan()
    new = [line for key, lines in sorted(hits.items()) if key not in ALLOWED for line in lines]
    assert not new, ("private names reached from another module (make them public, or add an API):\n"
                     + "\n".join(new))


def test_the_allow_list_only_shrinks() -> None:
    stale = sorted(set(ALLOWED) - set(_scan()))
    assert not stale, f"no longer accessed, remove from ALLOWED: {stale}"


def test_the_rule_sees_what_it_should() -> None:
    """The scanner itself: which accesses count, on a small made-up module."""
    source = '''
import torch._C
from .store import _record, RunRecord
from sys import _getframe


class Runner:
    def __init__(self):
        self._stop = False


class Context:
    def __init__(self, runner):
        self._runner = runner

    def stopped(self):
        return self._runner._stop                      # same module: fine


def f(trainer, point):
    trainer._load()                                    # cross-module
    getattr(trainer, "_loop_config")                   # cross-module, spelled as a string
    point._replace(x=1)                                # namedtuple API
    return Runner().__class__, _helper()


def _helper():
    return 1
'''
    names = sorted(name for _, name, _ in _accesses(ast.parse(source)))
    assert names == ["_C", "_getframe", "_load", "_loop_config", "_record"]


MAX_LOCAL_IMPORTS = 40  # was 238: what is left keeps torch, gradio and the data tools out of `backprop --help`


def _local_own_imports() -> list[tuple[str, int, str]]:
    """Imports of the package's own modules inside functions: (file, line, the line and the one above)."""
    found = []
    for path in sorted((ROOT / "src" / "backpropagate").rglob("*.py")):
        lines = path.read_text(encoding="utf-8").split("\n")
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("backpropagate")):
                    found.append((path.name, node.lineno, lines[node.lineno - 2] + "\n" + lines[node.lineno - 1]))
    return found


def test_few_function_local_imports_each_with_its_reason() -> None:
    found = _local_own_imports()
    assert len(found) < MAX_LOCAL_IMPORTS, f"{len(found)} function-local imports of our own modules"
    unexplained = [f"{name}:{line}" for name, line, text in found if "#" not in text]
    assert not unexplained, f"say why each import is inside its function: {unexplained}"
