"""The type stubs name exactly what their modules have (the native module's, and the ``.pyi`` beside a
``.py`` module that holds its overloads), carry docstrings, and the package is marked typed. Whether
the stubs' signatures are the modules' is mypy.stubtest's check (test_typing.py)."""

from __future__ import annotations

import ast
import importlib
import inspect
import os

import pyshm
from pyshm import _native

PKG = os.path.dirname(pyshm.__file__)


def stub_names(tree: ast.Module) -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            members = set()
            if isinstance(node, ast.ClassDef):
                for m in node.body:
                    if isinstance(m, ast.FunctionDef):
                        members.add(m.name)
                    elif isinstance(m, ast.AnnAssign) and isinstance(m.target, ast.Name):
                        members.add(m.target.id)
            names[node.name] = members
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = set()
    return names


def test_native_stubs_match_the_module():
    with open(os.path.join(PKG, "_native.pyi")) as f:
        stubs = stub_names(ast.parse(f.read()))
    public = {n for n in dir(_native) if not n.startswith("_")}
    assert {n for n in stubs if not n.startswith("_")} == public
    for dunder in (n for n in stubs if n.startswith("_")):
        assert hasattr(_native, dunder), dunder
    for cls in ("NativePool", "Block"):
        real = {n for n, _ in inspect.getmembers(getattr(_native, cls)) if not n.startswith("_")}
        assert stubs[cls] == real, cls


def test_the_package_is_typed_and_exports_what_it_documents():
    assert os.path.exists(os.path.join(PKG, "py.typed"))
    for name in pyshm.__all__:
        assert hasattr(pyshm, name), name
    for name in ("empty", "zeros", "ones", "full", "empty_like", "zeros_like", "ones_like", "full_like", "asarray",
                 "copy", "is_shared", "handle", "attach", "collect", "configure", "stats", "create", "delete",
                 "Pool", "StaleHandleError", "handles"):  # fmt: skip
        assert name in pyshm.__all__, name
        assert getattr(pyshm, name).__doc__, f"{name} has a docstring"


def test_star_import_leaves_the_builtins_alone():
    namespace: dict = {}
    exec("from pyshm import *", namespace)
    assert "list" not in namespace and "map" not in namespace
    assert "list" not in pyshm.__all__ and "map" not in pyshm.__all__
    assert pyshm.list.__doc__ and pyshm.map.__doc__, "still pyshm.list and pyshm.map"
    assert set(pyshm.__all__) <= set(namespace)


def python_stubs() -> list[str]:
    """The modules that have a ``.pyi`` beside their ``.py``."""
    return sorted(f[:-4] for f in os.listdir(PKG) if f.endswith(".pyi") and os.path.exists(os.path.join(PKG, f[:-1])))


def stub_exports(tree: ast.Module) -> set[str]:
    """What a stub gives importers: its definitions and its ``import x as x`` re-exports."""
    names = set(stub_names(tree))
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            names |= {a.asname for a in node.names if a.asname == a.name}
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def test_python_stubs_name_every_public_name_of_their_module():
    assert "_core" in python_stubs() and "_named" in python_stubs()
    for name in python_stubs():
        mod = importlib.import_module(f"pyshm.{name}")
        with open(os.path.join(PKG, f"{name}.pyi")) as f:
            tree = ast.parse(f.read())
        stubbed = stub_exports(tree)
        defined = {
            n
            for n, v in vars(mod).items()
            if not n.startswith("_") and getattr(v, "__module__", None) == mod.__name__ and callable(v)
        }
        public = set(mod.__all__) | defined
        assert public <= stubbed, f"{name}.pyi lacks {sorted(public - stubbed)}"
        extra = {n for n in stubbed if not n.startswith("_")} - set(vars(mod))
        assert not extra, f"{name}.pyi names what {name}.py has not: {sorted(extra)}"
        for cls, members in stub_names(tree).items():
            runtime = getattr(mod, cls, None)
            if inspect.isclass(runtime) and runtime.__module__ == mod.__name__:
                # Members are what the class defines, and the instance attributes it annotates.
                ours = [c for c in runtime.__mro__ if c.__module__ == mod.__name__]
                real = {n for c in ours for n in [*vars(c), *vars(c).get("__annotations__", {})]}
                real = {n for n in real if not n.startswith("_")}
                stubbed_members = {n for c in runtime.__mro__ for n in stub_names(tree).get(c.__name__, ())}
                assert real == {n for n in stubbed_members if not n.startswith("_")}, f"{name}.{cls}"


def test_every_public_stub_has_a_docstring():
    """Editors show the stubs' docstrings: every public function, method, property and class in
    every ``.pyi`` has one (an overloaded function on at least one of its overloads)."""
    for f in sorted(os.listdir(PKG)):
        if not f.endswith(".pyi"):
            continue
        with open(os.path.join(PKG, f)) as src:
            tree = ast.parse(src.read())
        scopes = [("", tree.body)] + [(f"{n.name}.", n.body) for n in tree.body if isinstance(n, ast.ClassDef)]
        for prefix, body in scopes:
            documented: dict[str, bool] = {}
            for node in body:
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                    setter = any(isinstance(d, ast.Attribute) and d.attr == "setter" for d in node.decorator_list)
                    if not setter:
                        has = ast.get_docstring(node) is not None
                        documented[node.name] = documented.get(node.name, False) or has
            missing = [prefix + n for n, has in documented.items() if not has]
            assert not missing, f"{f}: no docstring for {missing}"
