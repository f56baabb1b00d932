"""The package keeps its shape: read from the import statements of every module (with ``ast``).

* no import cycle among scoretut modules, counting the imports inside functions too;
* no private name (``_x``) imported from another module;
* no library module outside ``scoretut/cli/`` whose strings mention a ``--flag``: library
  errors name the argument (`` `lr` ``) and the command line maps it to its flag.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scoretut"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module of a ``from … import`` (relative imports included)."""
    if not node.level:
        return node.module or ""
    package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports(name: str) -> list[tuple[str, str | None, int]]:
    """``(module, imported name or None, line)`` for every import in module ``name``."""
    found = []
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve(name, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub, None, node.lineno) if sub in MODULES else (base, alias.name, node.lineno))
    return [f for f in found if f[0] == "scoretut" or f[0].startswith("scoretut.")]


def dependencies(name: str) -> set[str]:
    """The scoretut modules ``name`` imports; importing ``a.b.c`` also runs ``a/__init__`` and
    ``a/b/__init__``, so a package's ``__init__`` counts as a dependency too (not of itself)."""
    deps = set()
    for module, _, _ in imports(name):
        parts = module.split(".")
        for k in range(1, len(parts) + 1):
            prefix = ".".join(parts[:k])
            if prefix in MODULES and prefix != name and not name.startswith(prefix + "."):
                deps.add(prefix)
    return deps


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_checks_see_the_package():
    assert {"scoretut.sampling", "scoretut.sampling.core", "scoretut.cli", "scoretut.cli.toy",
            "scoretut.pipelines.toy2d", "scoretut.pipelines.images"} <= set(MODULES)
    assert "scoretut.sampling.core" in dependencies("scoretut.sampling")


def test_no_import_cycle():
    graph = {name: dependencies(name) for name in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_name_is_imported_across_modules(name):
    private = [f"{module}.{n} (line {line})" for module, n, line in imports(name)
               if n is not None and n.startswith("_") and not n.startswith("__")]
    private += [f"{module} (line {line})" for module, n, line in imports(name)
                if n is None and any(part.startswith("_") and part != "__main__" for part in module.split(".")[1:])]
    assert not private, f"{name} imports private names: {', '.join(private)}"


def flags_in(tree: ast.AST) -> list[str]:
    return [f"line {node.lineno}: {m}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            for m in FLAG.findall(node.value)]


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not (n == "scoretut.cli" or n.startswith("scoretut.cli.")
                                                                   or n == "scoretut.__main__")))
def test_library_modules_do_not_know_command_line_flags(name):
    found = flags_in(TREES[name])
    assert not found, f"{name} mentions command-line flags (name the argument in backticks instead): {found}"


def test_the_flag_check_sees_flags_in_strings_and_docstrings():
    tree = ast.parse('"""Use ``--lr``."""\nx = f"got --n {1}"\ny = "a-b --  -- x"\n')
    assert [f.split(": ")[1] for f in flags_in(tree)] == ["--lr", "--n"]
