"""pyshm's exceptions: where they sit among the builtins, and that each crosses a process (a
worker raising one reaches its caller as that class, with its message and errno)."""

from __future__ import annotations

import concurrent.futures
import errno
import os
import pickle
import uuid

import pytest

import pyshm

# (class name, constructor arguments, errno or None) for every exception pyshm exports.
EXCEPTIONS = [
    ("InvalidHandleError", ("invalid handle: made up",), None),
    ("StaleHandleError", ("the handle's array was freed",), None),
    ("PoolNotFoundError", (errno.ENOENT, "pool 'x' not found"), errno.ENOENT),
    ("PoolMemoryError", ("pool full: 10 bytes requested",), None),
    ("PoolCorruptError", ("the pool is corrupt: a lock is held by live pid 1",), None),
    ("NameTableFullError", ("the pool's name table is full",), None),
    ("PoolOSError", (errno.EIO, "read failed"), errno.EIO),
    ("PoolOSError", ("no errno here",), None),
    ("PoolPermissionError", (errno.EACCES, "shm_open refused"), errno.EACCES),
    ("PayloadError", ("cannot unpickle the task",), None),
    ("PoolFullError", ("pool 'x' has all 255 process slots taken by live processes",), None),
    ("TokenTableFullError", ("cannot make a handle: all 8 transfer token slots are taken",), None),
]


def exported_exceptions():
    return sorted(n for n in pyshm.__all__ if isinstance(getattr(pyshm, n), type) and issubclass(getattr(pyshm, n), BaseException))


def raise_one(name, args):
    """Runs in a worker: raise pyshm's exception ``name`` made from ``args``."""
    raise getattr(pyshm, name)(*args)


def open_missing_pool(name):
    """Runs in a worker: the native module raises `PoolNotFoundError` itself."""
    pyshm.Pool.open(name)


def check_arrived(error, name, args, code):
    assert type(error) is getattr(pyshm, name), (type(error), name)
    assert type(error).__module__ == "pyshm"
    assert error.args == args
    if code is not None:
        assert error.errno == code and error.strerror == args[1]


def test_every_exception_is_exported_from_pyshm_and_listed():
    names = exported_exceptions()
    assert {n for n, _, _ in EXCEPTIONS} == set(names)
    for n in names:
        assert getattr(pyshm, n).__module__ == "pyshm", n
        assert getattr(pyshm, n).__doc__, n


@pytest.mark.parametrize("name,args,code", EXCEPTIONS)
def test_each_exception_pickles_as_itself(name, args, code):
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        check_arrived(pickle.loads(pickle.dumps(getattr(pyshm, name)(*args), protocol)), name, args, code)


def test_permission_failures_are_permission_errors():
    cls = pyshm.PoolPermissionError
    assert issubclass(cls, PermissionError) and issubclass(cls, pyshm.PoolOSError)
    assert cls(errno.EPERM, "x").errno == errno.EPERM


def test_a_refused_pool_file_raises_permission_error():
    """A pool file the process may not open: `EACCES` from shm_open. Root may open any file, so
    the check runs in a forked child that drops to an unprivileged user first."""
    name = f"perm{uuid.uuid4().hex[:12]}"
    path = f"/dev/shm/pyshm-{name}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o000)
    os.close(fd)
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (child)
            try:
                os.close(r)
                if os.geteuid() == 0:
                    os.setgroups([])
                    os.setresgid(65534, 65534, 65534)
                    os.setresuid(65534, 65534, 65534)
                try:
                    pyshm.Pool.open(name)
                    out = "opened"
                except BaseException as e:  # noqa: BLE001 (reported to the parent)
                    mro = ",".join(c.__name__ for c in type(e).__mro__)
                    out = f"{type(e).__module__}.{type(e).__name__} {getattr(e, 'errno', None)} {mro} {e}"
                os.write(w, out.encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            out = f.read().decode()
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        os.unlink(path)
    assert out.startswith(f"pyshm.PoolPermissionError {errno.EACCES} "), out
    assert ",PoolOSError,PermissionError,OSError," in out, out


def test_across_the_stdlib_executor(ctx):
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        futures = [(ex.submit(raise_one, n, a), n, a, c) for n, a, c in EXCEPTIONS]
        for f, n, a, c in futures:
            check_arrived(f.exception(timeout=120), n, a, c)
        missing = f"missing{uuid.uuid4().hex[:12]}"
        e = ex.submit(open_missing_pool, missing).exception(timeout=120)
        assert type(e) is pyshm.PoolNotFoundError and e.errno == errno.ENOENT and missing in str(e)


def test_across_pyshms_executor(ctx):
    with pyshm.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        futures = [(ex.submit(raise_one, n, a), n, a, c) for n, a, c in EXCEPTIONS]
        for f, n, a, c in futures:
            check_arrived(f.exception(timeout=120), n, a, c)
        missing = f"missing{uuid.uuid4().hex[:12]}"
        e = ex.submit(open_missing_pool, missing).exception(timeout=120)
        assert type(e) is pyshm.PoolNotFoundError and e.errno == errno.ENOENT and missing in str(e)


def test_across_a_multiprocessing_pool(ctx):
    with ctx.Pool(1) as p:
        results = [(p.apply_async(raise_one, (n, a)), n, a, c) for n, a, c in EXCEPTIONS]
        for r, n, a, c in results:
            with pytest.raises(getattr(pyshm, n)) as info:
                r.get(timeout=120)
            check_arrived(info.value, n, a, c)
