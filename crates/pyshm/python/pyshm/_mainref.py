"""Which functions and classes of ``__main__`` a worker finds by name, so a payload can send them
by reference (a few bytes, as the standard library does) instead of by value (cloudpickle: code,
closure and globals, about 40-115 us to pickle and a new function object at every unpickle).

By value is always correct; by reference is correct only when the receiver's ``__main__`` binds
the same name to the same code. :func:`by_reference_rule` gives, for a start method, the rule
that decides it:

1. ``fork``: a worker's ``__main__`` is the parent's at the moment it was forked. An object goes
   by reference when ``__main__`` bound its name to that very object at every fork of this
   process so far (``_ForkRecord``, fed by an ``os.register_at_fork`` hook) and still does. A name
   defined or rebound after a fork goes by value, so a worker forked before it existed never
   misses it; any ``__main__`` qualifies, interactive ones included.
2. ``spawn`` and ``forkserver``: a worker runs the main script again as ``__mp_main__``
   (multiprocessing's own preparation data), without its ``if __name__ == "__main__":`` block.
   An object goes by reference when the script is a file multiprocessing re-runs, the name is
   bound exactly once in the module's own scope (anywhere outside function and class bodies,
   inside ``if`` blocks too, and never declared ``global`` in a function), by the ``def`` or
   ``class`` statement that made this object (checked by file and line), and that statement is
   at the top level of the module body (so it runs in the worker too). Everything else goes by
   value: interactive ``__main__`` (notebooks, ``python -c``, the REPL), functions defined under
   the guard, rebound, nested, lambdas, classes without a method to check their place by.

3. What a worker sends back: a forked worker sends by reference what its ``__main__`` bound to
   the same name when it was forked and still does, which the caller had then too (so a
   ``__main__`` class sent to it by reference comes back as the caller's own class, not as a
   copy). Spawn and forkserver workers need no rule: their script's objects belong to
   ``__mp_main__``, which cloudpickle sends by reference and the caller's multiprocessing
   aliases to its ``__main__``; what arrived by value goes back by value.

Only names without a dot are considered (nested qualified names go by value). The semantics of
by reference are the standard library's: the worker's function reads the worker's module
globals, not the caller's current values (the pyshm.map kernel still goes by value for that).
"""

from __future__ import annotations

import ast
import os
import sys
import threading
import types
import weakref
from typing import Any, Callable, Optional

__all__ = ["by_reference_rule", "result_rule"]

Rule = Callable[[Any], bool]


class _ForkRecord:
    """Names of ``__main__`` bound to the same function or class at every fork of this process
    so far (``None`` before the first fork: nothing recorded, nothing goes by reference). Held
    by weak reference, and only functions and classes (the only objects that go by name): the
    record must not keep a ``__main__`` global alive after the script deletes it (an array or
    an executor in a global of a script that forks was never freed after ``del``: found in
    review, session 8)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stable: Optional[dict[str, weakref.ref]] = None
        self.born: Optional[dict[str, weakref.ref]] = None  # __main__ when this process was forked

    def before_fork(self) -> None:
        now = _named_in_main()
        with self.lock:
            if self.stable is None:
                self.stable = now
            else:
                self.stable = {k: r for k, r in self.stable.items() if k in now and now[k]() is r()}

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        self.stable = None  # this process's own forks start a new record
        self.born = _named_in_main()

    def born_rule(self, obj: Any) -> bool:
        """In a forked process: whether ``__main__`` bound the object's name to it when this
        process was forked, and still does (rule 3 of the module doc)."""
        return _recorded(self.born, obj)

    def rule(self, obj: Any) -> bool:
        return _recorded(self.stable, obj)


def _named_in_main() -> dict[str, weakref.ref]:
    """Weak references to the functions and classes ``__main__`` binds now, by name."""
    main = sys.modules.get("__main__")
    return {
        k: weakref.ref(v)
        for k, v in list(getattr(main, "__dict__", {}).items())
        if isinstance(v, (types.FunctionType, type))
    }


def _recorded(record: Optional[dict[str, weakref.ref]], obj: Any) -> bool:
    """Whether ``record`` has the object under its qualified name, and ``__main__`` still binds
    that name to it."""
    if record is None:
        return False
    name = getattr(obj, "__qualname__", None)
    if not isinstance(name, str):
        return False
    r = record.get(name)
    return r is not None and r() is obj and getattr(sys.modules.get("__main__"), name, None) is obj


_fork_record = _ForkRecord()
os.register_at_fork(before=_fork_record.before_fork, after_in_child=_fork_record.after_fork_in_child)


def _bound_names(body: list, counts: dict[str, int], top: Optional[dict[str, tuple[int, int, list[int]]]]) -> None:
    """Count the module-scope bindings of each name in ``body`` (recursing into compound
    statements, not into function or class bodies); record in ``top`` the ``def`` and ``class``
    statements directly in the module body: name -> (first line, last line, decorator lines)."""

    def bind(name: str) -> None:
        counts[name] = counts.get(name, 0) + 1

    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bind(stmt.name)
            if top is not None:
                decorators = [d.lineno for d in stmt.decorator_list]
                top[stmt.name] = (stmt.lineno, getattr(stmt, "end_lineno", None) or stmt.lineno, decorators)
            for node in ast.walk(stmt):  # `global name` in any function rebinds it elsewhere
                if isinstance(node, ast.Global):
                    for n in node.names:
                        counts[n] = counts.get(n, 0) + 2
            continue
        for node in ast.walk(stmt):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                if not isinstance(node, ast.Lambda):
                    bind(node.name)
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Global):
                        for n in inner.names:
                            counts[n] = counts.get(n, 0) + 2
            elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                bind(node.id)
            elif isinstance(node, ast.alias):
                bind((node.asname or node.name).split(".")[0])
            elif isinstance(node, ast.ExceptHandler) and node.name:
                bind(node.name)
            elif type(node).__name__ in ("MatchAs", "MatchStar", "MatchMapping"):  # Python 3.10+
                name = getattr(node, "name", None) or getattr(node, "rest", None)
                if name:
                    bind(name)


class _Script:
    """The main script as spawn and forkserver workers re-run it (see the module doc, rule 2)."""

    def __init__(self, path: str, defs: dict[str, tuple[int, int, list[int]]]) -> None:
        self.path = path
        self.defs = defs

    @staticmethod
    def of_main() -> Optional["_Script"]:
        main = sys.modules.get("__main__")
        # multiprocessing.spawn.get_preparation_data and _fixup_main_from_*: a module run with
        # -m is re-imported by name unless it is a package's __main__; otherwise the file is
        # re-run unless it is IPython's launcher.
        spec_name = getattr(getattr(main, "__spec__", None), "name", None)
        if spec_name is not None and (spec_name == "__main__" or spec_name.endswith(".__main__")):
            return None
        path = getattr(main, "__file__", None)
        if not isinstance(path, str) or not path.endswith(".py"):
            return None
        if os.path.splitext(os.path.basename(path))[0] == "ipython":
            return None
        try:
            with open(path, "rb") as f:
                tree = ast.parse(f.read(), path)
        except (OSError, SyntaxError, ValueError):
            return None
        counts: dict[str, int] = {}
        defs: dict[str, tuple[int, int, list[int]]] = {}
        _bound_names(tree.body, counts, defs)
        once = {name: d for name, d in defs.items() if counts.get(name) == 1}
        return _Script(os.path.abspath(path), once)

    def _code_here(self, code: types.CodeType, first: int, last: int) -> bool:
        return os.path.abspath(code.co_filename) == self.path and first <= code.co_firstlineno <= last

    def rule(self, obj: Any) -> bool:
        name = getattr(obj, "__qualname__", None)
        if not isinstance(name, str):
            return False
        d = self.defs.get(name)
        if d is None or getattr(sys.modules.get("__main__"), name, None) is not obj:
            return False
        first, last, decorators = d
        if isinstance(obj, types.FunctionType):
            code = obj.__code__
            return os.path.abspath(code.co_filename) == self.path and code.co_firstlineno in (first, *decorators)
        if isinstance(obj, type):
            line = getattr(obj, "__firstlineno__", None)  # Python 3.13+
            if line is not None:
                return line in (first, *decorators)
            start = min((first, *decorators))
            for value in vars(obj).values():
                fn = getattr(value, "__func__", value)
                fn_code = getattr(fn, "__code__", None)
                if isinstance(fn_code, types.CodeType) and self._code_here(fn_code, start, last):
                    return True
        return False


_script_lock = threading.Lock()
_script: Any = False  # not looked at yet; then a _Script or None


def _script_rule(obj: Any) -> bool:
    global _script
    script = _script
    if script is False:
        with _script_lock:
            if _script is False:
                _script = _Script.of_main()
            script = _script
    return script is not None and script.rule(obj)


def _never(obj: Any) -> bool:
    return False


def result_rule(obj: Any) -> bool:
    """The rule for what a worker sends back (rule 3 of the module doc)."""
    return _fork_record.born_rule(obj)


def by_reference_rule(start_method: Optional[str]) -> Rule:
    """The rule that says whether an object of ``__main__`` may go by reference to workers
    started with ``start_method`` (see the module doc); by value for an unknown method."""
    if start_method == "fork":
        return _fork_record.rule
    if start_method in ("spawn", "forkserver"):
        return _script_rule
    return _never
