"""The compiler's import graph: no circles and no upward arrows.

Every ``import`` of a ``foldgen`` module counts, including those inside functions (a deferred
import is still a dependency). The pipeline's layers, bottom to top: the leaf helpers
(errors, limits, source, naming), the spec and the IR (expr, functions, parse, derive, ir),
the printers, the rules, emission, and the drivers (build, cli, the package's API).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "foldgen"

# A module may import only from its own layer or a lower one.
LAYERS = [
    {"_version", "errors", "limits", "source", "naming", "runtime", "dims"},
    {"yamlread", "spec", "expr", "functions", "parse", "derive", "affine", "ir"},
    {"printer", "mathprint"},
    {"rules"},
    {"emit", "link"},
    {"build", "api", "verify", "show", "cli", "__init__", "__main__"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The foldgen modules ``path`` imports, anywhere in its body."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "foldgen")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "foldgen":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                sub = PACKAGE.parent / Path(*candidate.split("."))
                found.add(candidate if sub.with_suffix(".py").exists() or sub.is_dir() else base)
    found.discard(me)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {i for i in _imports(path) if i in modules} for name, path in modules.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"{module}: not assigned to a layer in tests/test_architecture.py")


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                pytest.fail("import circle: " + " → ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_upward_imports():
    upward = [
        f"{module} → {dep}"
        for module, deps in sorted(_graph().items())
        for dep in sorted(deps)
        if _layer(dep) > _layer(module)
    ]
    assert not upward, "imports from a higher layer: " + ", ".join(upward)


def test_the_graph_sees_deferred_imports(tmp_path):
    """The check is not vacuous: a function-level import is an edge."""
    module = tmp_path / "foldgen" / "expr.py"
    module.parent.mkdir()
    module.write_text("def f():\n    from foldgen.mathprint import math_str\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "foldgen"
    try:
        assert _imports(module) == {"foldgen.mathprint"}
    finally:
        PACKAGE = saved
