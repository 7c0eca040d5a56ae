"""The memfd backend: ``configure(backend=...)`` / ``PYSHM_BACKEND`` / ``Pool(backend=...)``.

The default pool's backend is fixed when the pool is created, so the runs that need a fresh
default pool are child interpreters: the constructors, transfer (fork, spawn, forkserver), the
executor and map test files run again under ``PYSHM_BACKEND=memfd``, and a 200 MB array works
inside a private 64 MiB /dev/shm (``unshare -m`` plus a tmpfs mounted on /dev/shm, as root,
which CI is: only the child sees the mount, and it vanishes with the child). Every child runs
under a timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pyshm
from pyshm import _native

HERE = os.path.dirname(os.path.abspath(__file__))


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child that makes its own default pool."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYSHM_POOL", "PYSHM_BACKEND")}
    env.update(extra)
    return env


def run(code: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=HERE,
    )


def as_code(h: pyshm.Handle) -> str:
    """Python source that rebuilds handle ``h`` in a child."""
    return f"pyshm.Handle({h.pool!r}, {h.data!r})"


def shm_files_of(pool: str) -> list[str]:
    return sorted(f for f in os.listdir("/dev/shm") if f == f"pyshm-{pool}" or f.startswith(f"pyshm-{pool}-"))


def test_a_memfd_pool_keeps_its_segments_out_of_dev_shm():
    with pyshm.Pool(backend="memfd") as pool:
        assert pool.backend == "memfd"
        a = pool.full(1 << 20, 3.0)  # 8 MiB: data segments
        b = pool.copy(np.arange(10))
        assert shm_files_of(pool.name) == [f"pyshm-{pool.name}"]
        info = next(p for p in _native.list_pools() if p.name == pool.name)
        assert (info.backend, info.memfd_segments >= 1) == ("memfd", True)
        assert a.sum() == 3.0 * (1 << 20) and b.sum() == 45
        pool.check()
        del a, b
    with pyshm.Pool() as pool:
        assert pool.backend == "shm"


def test_the_backend_is_checked():
    with pytest.raises(ValueError, match="memfd"):
        pyshm.Pool(backend="tmpfs")
    with pytest.raises(ValueError, match="memfd"):
        pyshm.configure(backend="disk")
    r = run("import pyshm; pyshm.zeros(3)", PYSHM_BACKEND="disk")
    assert r.returncode != 0 and "PYSHM_BACKEND='disk'" in r.stderr


def test_configure_and_the_environment_choose_the_default_pools_backend():
    code = """
        import pyshm
        from pyshm import _pools
        %s
        a = pyshm.zeros(1 << 20)
        print(_pools.default.backend)
        try:
            pyshm.configure(backend="shm")
        except RuntimeError as e:
            print("late:", e)
    """
    r = run(code % 'pyshm.configure(backend="memfd")')
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "memfd" and lines[1].startswith("late:") and "PYSHM_BACKEND" in lines[1]
    r = run(code % "", PYSHM_BACKEND="memfd")
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "memfd", r.stderr
    r = run(code % "")
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "shm", r.stderr


def test_the_default_pool_follows_pyshm_backend():
    """Run by the memfd pass below too: it proves that pass used memfds."""
    assert pyshm._pools.create_default().backend == os.environ.get("PYSHM_BACKEND", "shm")


@pytest.mark.parametrize(
    "file", ["test_constructors.py", "test_transfer.py", "test_executor.py", "test_map.py", "test_memfd.py"]
)
def test_constructors_transfer_executor_and_map_pass_with_the_memfd_backend(file):
    # One file per run, each with its own watchdog (one for all five left a slow CI little room).
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "not with_the_memfd_backend"]
        + [os.path.join(HERE, file)],
        env=child_env(PYSHM_BACKEND="memfd"),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=HERE,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "failed" not in r.stdout


SMALL_SHM = """
    import multiprocessing as mp, os
    import numpy as np
    import pyshm

    def total(a):
        return int(a.sum())

    if __name__ == "__main__":
        a = pyshm.ones(200_000_000, dtype=np.uint8)  # 200 MB in a 64 MiB /dev/shm
        small = [pyshm.copy(np.arange(1000)) for _ in range(100)]
        for method in ("fork", "spawn", "forkserver"):
            with mp.get_context(method).Pool(1) as p:
                assert p.apply(total, (a,)) == 200_000_000, method
        st = os.statvfs("/dev/shm")
        print((st.f_blocks - st.f_bfree) * st.f_frsize)
"""


def test_a_200_mb_array_works_in_a_64_mib_dev_shm_with_memfd(tmp_path):
    script = tmp_path / "small_shm.py"
    script.write_text(textwrap.dedent(SMALL_SHM))
    mount = f"mount -t tmpfs -o size=64m tmpfs /dev/shm && exec {sys.executable} {script}"
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", mount],
        env=child_env(PYSHM_BACKEND="memfd"),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=HERE,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    held = int(r.stdout.split()[-1])
    assert held < 8 << 20, f"/dev/shm held {held} bytes: only segment 0 belongs there"


def test_a_memfd_pool_is_reached_by_a_process_started_later():
    """A process that inherited nothing (not a child) gets the segments from a live member."""
    with pyshm.Pool(backend="memfd") as pool:
        a = pool.full(1 << 18, 2.0)
        code = f"""
            import pyshm
            print(pyshm.attach({as_code(pyshm.handle(a))}).sum())
        """
        r = run(code)
        assert r.returncode == 0, r.stderr
        assert float(r.stdout) == 2.0 * (1 << 18)
        del a


def test_killing_the_member_that_served_the_descriptors(tmp_path):
    """A spawned member makes an array (a memfd segment only it holds), we attach it (so we
    hold the segment too), it is SIGKILLed; a process started afterwards still reads it."""
    with pyshm.Pool(backend="memfd") as pool:
        code = f"""
            import sys, time, pyshm
            pool = pyshm.Pool.open({pool.name!r})
            a = pool.full(1 << 20, 5.0)
            h = pyshm.handle(a)
            print(h.pool, h.data.hex(), flush=True)
            time.sleep(120)
        """
        member = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)], env=child_env(), stdout=subprocess.PIPE, cwd=HERE
        )
        try:
            line = member.stdout.readline()  # type: ignore[union-attr]
            pool_name, data = line.decode().split()
            a = pyshm.attach(pyshm.Handle(pool_name, bytes.fromhex(data)))
        finally:
            member.kill()
            member.wait(timeout=30)
        assert a.sum() == 5.0 * (1 << 20)
        r = run(f"import pyshm; print(pyshm.attach({as_code(pyshm.handle(a))}).sum())")
        assert r.returncode == 0, r.stderr
        assert float(r.stdout) == 5.0 * (1 << 20)
        pool.collect()
        pool.check()
        del a


def test_backend_is_reported_by_ls():
    with pyshm.Pool(backend="memfd") as pool:
        a = pool.zeros(1 << 20)
        r = subprocess.run(
            [sys.executable, "-m", "pyshm", "ls"], env=child_env(), capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr
        line = next(line for line in r.stdout.splitlines() if line.startswith(pool.name))
        assert "memfd (+1 segments)" in line
        del a
    assert np.dtype("f8").itemsize == 8
