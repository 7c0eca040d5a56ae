"""The type stubs name exactly what the native module has, and the package is marked typed."""

from __future__ import annotations

import ast
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
