"""Functions and classes of a main script go to the executor's workers by reference when the
worker finds them by name, by value otherwise (pyshm._mainref), and every case works under
fork, spawn and forkserver. The interactive cases (no script) are in test_interactive.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from conftest import METHODS

SCRIPT = textwrap.dedent(
    """
    import multiprocessing as mp
    import pickle
    import sys

    import pyshm
    from pyshm import _mainref
    from pyshm._transfer import Payload

    LIMIT = 1


    def top(x):
        return x + LIMIT


    def redefined(x):
        return "first"


    def redefined(x):
        return "second"


    def rebound(x):
        return "original"


    def later(x):
        return "old"


    class Box:
        def __init__(self, v):
            self.v = v

        def get(self):
            return self.v


    def make_box(v):
        return Box(v)


    def by_reference(rule, obj):
        data = Payload(obj, by_reference=rule).freeze().data
        return len(data) < 100  # a reference is a few bytes; a function by value hundreds


    if __name__ == "__main__":
        METHOD = sys.argv[1]

        def guarded(x):
            return x * 2

        def rebound(x):  # noqa: F811 - the guard's rebinding of a top-level name
            return "guarded"

        def nested():
            def inner(x):
                return x - 1
            return inner

        LIMIT = 100  # the caller's change: a by-value function would see it
        rule = _mainref.by_reference_rule(METHOD)
        with pyshm.ProcessPoolExecutor(2, mp.get_context(METHOD)) as ex:
            assert ex.submit(top, 1).result() in (2, 101)
            assert ex.submit(guarded, 4).result() == 8
            assert ex.submit(rebound, 0).result() == "guarded"
            assert ex.submit(redefined, 0).result() == "second"
            assert ex.submit(nested(), 5).result() == 4
            assert ex.submit(lambda x: x * 3, 2).result() == 6
            box = ex.submit(make_box, 7).result()
            assert type(box) is Box and box.get() == 7
            echoed = ex.submit(Box.get, Box(Box(3))).result()
            assert type(echoed) is Box and echoed.v == 3

            def after_fork(x):  # defined after the workers started
                return x + 1000

            assert ex.submit(after_fork, 1).result() == 1001

            def later(x):  # noqa: F811 - rebound after the workers started
                return "new"

            assert ex.submit(later, 0).result() == "new"

            # What went by reference: the top-level definitions bound once.
            assert by_reference(rule, top) and by_reference(rule, Box) and by_reference(rule, make_box)
            assert not by_reference(rule, after_fork) and not by_reference(rule, nested())
            if METHOD == "fork":  # the workers have the caller's __main__ as it was at fork time
                assert by_reference(rule, guarded) and by_reference(rule, redefined)
                assert by_reference(rule, rebound)
                assert ex.submit(top, 1).result() == 101
            else:  # the workers re-run the script without its guarded block
                assert not by_reference(rule, guarded) and not by_reference(rule, redefined)
                assert not by_reference(rule, rebound)
                assert ex.submit(top, 1).result() == 2  # the standard library's semantics
        print("script ok")
    """
)


@pytest.mark.parametrize("method", METHODS)
def test_script_functions(method, tmp_path):
    path = tmp_path / "main_script.py"
    path.write_text(SCRIPT)
    r = subprocess.run([sys.executable, str(path), method], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "script ok" in r.stdout


FREED_SCRIPT = textwrap.dedent(
    """
    import gc, sys, weakref
    import multiprocessing as mp
    import numpy as np
    import pyshm

    def twice(x):
        return 2 * x

    if __name__ == "__main__":
        big = np.ones(1000)
        probe = weakref.ref(big)
        with pyshm.ProcessPoolExecutor(1, mp_context=mp.get_context("fork")) as ex:
            assert ex.submit(twice, 1).result() == 2
        del big
        gc.collect()
        print("freed" if probe() is None else "kept")
    """
)


def test_a_main_global_deleted_after_a_fork_is_freed(tmp_path):
    # The fork record (which names of __main__ go by reference) must not hold __main__'s
    # globals: it held every one, so an array or an executor in a global of a script that forks
    # was never freed after `del`.
    path = tmp_path / "freed_script.py"
    path.write_text(FREED_SCRIPT)
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "freed"


def test_unknown_start_method_goes_by_value():
    from pyshm import _mainref

    assert _mainref.by_reference_rule(None)(test_unknown_start_method_goes_by_value) is False


def test_plain_payloads_pickle_as_the_full_pickler():
    """Calls of scalars and functions found by name take the plain C pickler: the same bytes
    as PoolPickler's, no handles; anything else (a nested function, an array) takes the full
    one."""
    import io
    import pickle

    import numpy as np

    from pyshm import _transfer

    def full(obj):
        buf = io.BytesIO()
        _transfer.PoolPickler(buf, []).dump(obj)
        return buf.getvalue()

    import math
    import os.path

    calls = ((os.path.join, ("a", "b"), {}), (math.hypot, (1, 2.5, True), {}), (max, ("s", None, b"x", 1j), {"k": 3}))
    for call in calls:
        assert _transfer._plain(call, None, 2)
        assert _transfer.dumps(call, []) == full(call)
        assert pickle.loads(_transfer.dumps(call, [])) == call

    def nested(x):
        return x

    assert not _transfer._plain((nested, (1,), {}), None, 2)
    assert pickle.loads(_transfer.dumps((nested, (1,), {}), []))[0](5) == 5
    assert not _transfer._plain((max, (np.arange(3),), {}), None, 2)
    assert not _transfer._plain((max, (pyshm_name(),), {}), None, 2)
    assert not _transfer._plain((np.add, (1,), {}), None, 2)  # a ufunc: the full pickler decides


def pyshm_name():
    """A str subclass (a NamedArray-like value) is not a plain str."""

    class Name(str):
        pass

    return Name("a")
