"""The import graph of legampi/: no cycle anywhere, and only the entry points import the CLI.

Imports are read from the source with ast, so every import counts: at module level, inside functions
(lazy imports), and under ``if TYPE_CHECKING``. A cycle hidden in a function still ties two modules
together; it only fails later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "legampi"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The legampi modules that NAME (at PATH) imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import legampi.formats.crypt4gh.x` -> the module part
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (depth-first search, colouring nodes)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_kind_of_import_is_read(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text(
        "from __future__ import annotations\n"
        "import os\n"
        "from typing import TYPE_CHECKING\n"
        "import legampi.a\n"
        "from . import b\n"
        "from .c import name\n"
        "from legampi.pkg import d, thing\n"
        "if TYPE_CHECKING:\n"
        "    from .e import T\n"
        "def f():\n"
        "    from .pkg.sub import g\n"
        "    import legampi.pkg.sub.h\n",
        encoding="utf-8",
    )
    known = {"legampi", "legampi.a", "legampi.b", "legampi.c", "legampi.e", "legampi.pkg", "legampi.pkg.d"}
    known |= {"legampi.pkg.sub", "legampi.mod"}
    assert imports_of("legampi.mod", source, known) == {
        "legampi.a",
        "legampi.b",  # `from . import b`: the module, not the package
        "legampi.c",
        "legampi.pkg.d",
        "legampi.pkg",  # `thing` is a name in the package
        "legampi.e",  # under TYPE_CHECKING
        "legampi.pkg.sub",  # inside a function; `legampi.pkg.sub.h` is not a module: its nearest module
    }


def test_the_real_graph_is_read() -> None:
    g = graph()
    assert "legampi.cli" in g["legampi.__main__"]
    assert "legampi.status" in g["legampi.db"]
    assert "legampi.formats.base" in g["legampi.formats.crypt4gh"]


def test_no_import_cycle_in_legampi() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_only_the_entry_points_import_the_cli() -> None:
    importers = sorted(name for name, deps in graph().items() if "legampi.cli" in deps)
    assert importers == ["legampi.__main__"]


def test_the_status_model_imports_nothing_from_legampi() -> None:
    """The database layer takes the status names from legampi.status: it must stay free of legampi imports."""
    assert graph()["legampi.status"] == set()


@pytest.mark.parametrize(
    "edges, expected",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b", "c"}, "b": set(), "c": {"c2"}, "c2": {"c"}}, ["c", "c2", "c"]),
    ],
)
def test_find_cycle(edges: dict[str, set[str]], expected: list[str] | None) -> None:
    assert find_cycle(edges) == expected
