"""The package's shape: no import cycles, one-way layers, small modules and functions.

The import graph is built from the source (``ast``), not by importing: every ``import`` and
``from … import`` anywhere in a file counts, including function-local imports and imports
under ``if TYPE_CHECKING:`` (a cycle hidden in a function is still a cycle). Relative imports
are resolved; ``from a.b import c`` is an edge to the module ``a.b.c`` when that is a module,
otherwise to ``a.b``. Importing a submodule is not counted as an edge to its parent
packages' ``__init__`` (Python runs them, but they only gather names).

A file's **package** is ``pacbound.<first part>`` (``pacbound.posterior`` for
``pacbound/posterior/fit.py``); top-level modules (``pacbound.errors``) are their own
package. Packages form the layers of :data:`LAYERS`: a package may import only packages of
a lower layer.

Sizes: a module has at most :data:`MAX_MODULE_LINES` physical lines (``len(splitlines())``,
blank lines and comments included). A function or method has at most
:data:`MAX_FUNCTION_LINES` lines counted from its ``def`` line to its last line (signature,
docstring, comments and blank lines inside included; decorators not), so a nested function
counts toward its enclosing function and is checked on its own as well.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pacbound"

#: Lower layers first; a package may import only packages of a strictly lower layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("pacbound.errors", "pacbound._version"),
    ("pacbound",),  # the root __init__: the version and the error types
    ("pacbound.bounds",),
    ("pacbound.parallel",),
    ("pacbound.models",),
    ("pacbound.io",),
    ("pacbound.compressors",),
    ("pacbound.posterior",),
    ("pacbound.marginal",),
    ("pacbound.certify",),
    ("pacbound.report",),
    ("pacbound.verify",),
    ("pacbound.harness",),
    ("pacbound.cli",),
    ("pacbound.__main__",),
)

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80

Graph = dict[str, set[str]]


def module_files(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` file of ``package`` under ``root``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _known(name: str, modules: Mapping[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of ``modules`` (``None``: none is)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.Import | ast.ImportFrom, here: str, modules: Mapping[str, Path]) -> set[str]:
    """The modules of ``modules`` one import statement in module ``here`` refers to."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = here.split(".")
            if modules[here].name != "__init__.py":
                parts.pop()  # a module's level-1 base is its package
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, base] if base else parts)
        names = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
            for alias in node.names
        ]
    return {known for name in names if (known := _known(name, modules)) is not None}


def import_graph(root: Path, package: str = PACKAGE) -> Graph:
    """Module → the modules of ``package`` it imports (anywhere in the file)."""
    modules = module_files(root, package)
    graph: Graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name] |= _targets(node, name, modules) - {name}
    return graph


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def package_graph(graph: Graph) -> Graph:
    out: Graph = {package_of(m): set() for m in graph}
    for module, targets in graph.items():
        out[package_of(module)] |= {package_of(t) for t in targets} - {package_of(module)}
    return out


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def layer_violations(packages: Graph, layers: Iterable[tuple[str, ...]] = LAYERS) -> list[str]:
    """``"a -> b"`` for every import of a package of the same or a higher layer, and
    ``"a: not in LAYERS"`` for a package without a layer."""
    rank = {package: i for i, layer in enumerate(layers) for package in layer}
    out = [f"{p}: not in LAYERS" for p in sorted(packages) if p not in rank]
    for package, targets in sorted(packages.items()):
        for target in sorted(targets):
            if package in rank and target in rank and rank[target] >= rank[package]:
                out.append(f"{package} -> {target}")
    return out


def function_lengths(path: Path) -> list[tuple[str, int, int]]:
    """``(name, def line, lines)`` of every function and method in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno is not None
            out.append((node.name, node.lineno, node.end_lineno - node.lineno + 1))
    return out


# ---------------------------------------------------------------------------------------------
# The package


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(ROOT)


def test_no_import_cycle_between_files(graph: Graph) -> None:
    found = cycles(graph)
    assert not found, "files importing each other: " + "; ".join(map(" <-> ".join, found))


def test_no_import_cycle_between_packages(graph: Graph) -> None:
    found = cycles(package_graph(graph))
    assert not found, "packages importing each other: " + "; ".join(map(" <-> ".join, found))


def test_packages_import_only_lower_layers(graph: Graph) -> None:
    found = layer_violations(package_graph(graph))
    assert not found, "imports against the layering: " + "; ".join(found)


def test_modules_are_small() -> None:
    too_long = [
        f"{path.relative_to(ROOT)} ({n} lines)"
        for path in module_files(ROOT).values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    ]
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: " + "; ".join(too_long)


def test_functions_are_short() -> None:
    too_long = [
        f"{path.relative_to(ROOT)}:{line} {name} ({n} lines)"
        for path in module_files(ROOT).values()
        for name, line, n in function_lengths(path)
        if n > MAX_FUNCTION_LINES
    ]
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines: " + "; ".join(too_long)


# ---------------------------------------------------------------------------------------------
# The checks themselves, on a planted package


def _write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_graph_sees_local_relative_and_type_checking_imports(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/errors.py": "",
            "pkg/low/__init__.py": "from pkg.low.a import f\n",
            "pkg/low/a.py": "def f():\n    from . import b\n",
            "pkg/low/b.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from .a import f\nimport pkg.errors\n",
            "pkg/high/__init__.py": "",
            "pkg/high/c.py": "from ..low import a\nfrom pkg.low.b import x\nimport os\n",
            "pkg/high/d.py": "from pkg import errors\nfrom pkg.high import c\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph == {
        "pkg": set(),
        "pkg.errors": set(),
        "pkg.low": {"pkg.low.a"},
        "pkg.low.a": {"pkg.low.b"},
        "pkg.low.b": {"pkg.low.a", "pkg.errors"},
        "pkg.high": set(),
        "pkg.high.c": {"pkg.low.a", "pkg.low.b"},
        "pkg.high.d": {"pkg.errors", "pkg.high.c"},
    }
    assert cycles(graph) == [["pkg.low.a", "pkg.low.b"]]
    packages = package_graph(graph)
    assert packages["pkg.high"] == {"pkg.low", "pkg.errors"}
    assert cycles(packages) == []
    assert layer_violations(packages, [("pkg.errors",), ("pkg",), ("pkg.high",)]) == [
        "pkg.low: not in LAYERS"
    ]
    assert layer_violations(packages, [("pkg.errors",), ("pkg",), ("pkg.high",), ("pkg.low",)]) == [
        "pkg.high -> pkg.low"
    ]
    packages["pkg.low"].add("pkg.high")
    assert cycles(packages) == [["pkg.high", "pkg.low"]]


def test_function_length_counts_from_def_to_last_line(tmp_path: Path) -> None:
    body = "    x = 1\n" * 77
    _write(
        tmp_path,
        {
            "f.py": f'@decorator\ndef short():\n    """Doc."""\n{body}\n'
            f'def long():\n    """Doc."""\n{body}    # a comment\n\n    return x\n'
        },
    )
    assert function_lengths(tmp_path / "f.py") == [("short", 2, 79), ("long", 82, 82)]
