"""The package's structure: no import cycles, no private names borrowed across modules."""

from __future__ import annotations

import ast
import os

import pyshm

PKG = os.path.dirname(pyshm.__file__)


def package_modules() -> dict[str, ast.Module]:
    trees = {}
    for f in sorted(os.listdir(PKG)):
        if f.endswith(".py"):
            with open(os.path.join(PKG, f)) as fh:
                trees[f[:-3]] = ast.parse(fh.read())
    return trees


def imports_of(name: str, tree: ast.Module) -> set[str]:
    """Sibling modules that `name` imports, at any level (function-level imports count; those
    under `if TYPE_CHECKING:` do not, since they never run)."""
    out = set()
    type_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pyshm"):
            parts = node.module.split(".")
            out.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "pyshm":
                    out.add(parts[1] if len(parts) > 1 else "__init__")
    out.discard(name)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of `graph`, or [] (depth-first search with colours)."""
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str]:
        colour[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if colour.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in colour:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        colour[n] = 2
        return []

    for n in sorted(graph):
        if n not in colour:
            found = visit(n)
            if found:
                return found
    return []


def test_the_package_has_no_import_cycles():
    trees = package_modules()
    graph = {name: imports_of(name, tree) & set(trees) for name, tree in trees.items()}
    # The package's __init__ imports every module to re-export it; a module that imports the
    # package itself (`import pyshm`) depends on all of them.
    assert find_cycle(graph) == [], " -> ".join(find_cycle(graph))


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_module_uses_another_modules_private_names():
    trees = package_modules()
    siblings = set(trees)
    borrowed = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id in siblings and node.value.id != name and node.attr.startswith("_"):
                    if not node.attr.startswith("__"):
                        borrowed.append(f"{name}: {node.value.id}.{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        borrowed.append(f"{name}: from .{node.module} import {a.name}")
    assert borrowed == []
