"""Scale-out engines: each engine's own path against pyshm's, measured in the same run.

    python benchmarks/scaleout.py [--joblib-default-mb N]

- Ray, same node: a 160 MB float64 argument, time until the task has it (it reports whether it
  is writable): Ray's own path (plain array, through the object store) and ``pyshm.ray.remote``
  (pooled array, by handle).
- joblib: W1, ``delayed(add_one)(x)`` with x = 160 MB pooled, under the ``"pyshm"`` backend,
  against ``pyshm.ProcessPoolExecutor`` (the issue's target: within 1.2x). joblib's default
  backend is measured with a smaller array (``--joblib-default-mb``, default 16): at 160 MB it
  takes minutes on a loaded 2-core machine.
- Dask, same host (``LocalCluster``, 2 worker processes): ``submit(f, a).result()`` where ``f``
  returns an array of the same size (160 MB): Dask's own path (plain arrays) and, after
  ``pyshm.dask.install``, a plain pooled array (the result is born in the pool by the workers'
  allocator), with the bytes Dask wrote to TCP in all processes for that one call (``TCP.write``
  counted in each process; the loopback interface's counter beside it includes everyone's
  traffic), and ``by_handle`` on both sides. A plain argument (``sum`` of a 160 MB array) before
  and after install shows that Dask's own path is unchanged.
Medians of 5 after a warm-up (joblib: three alternating rounds of medians of 5).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import fmt, machine_line  # noqa: E402

import pyshm  # noqa: E402

N = 20_000_000  # 160 MB of float64


def add_one(x: np.ndarray) -> np.ndarray:
    return x + 1


def writable(x: np.ndarray) -> bool:
    return bool(x.flags.writeable)


def median_of(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_ray() -> list[tuple[str, str, str]]:
    import ray

    import pyshm.ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        plain = np.zeros(N)
        pooled = pyshm.zeros(N)
        own = ray.remote(writable)
        ours = pyshm.ray.remote(writable)
        t_own = median_of(lambda: ray.get(own.remote(plain)))
        t_ours = median_of(lambda: ray.get(ours.remote(pooled)))
        return [
            ("Ray: 160 MB argument, Ray's own path", fmt(t_own), f"writable={ray.get(own.remote(plain))}"),
            ("Ray: 160 MB argument, pyshm.ray.remote", fmt(t_ours), f"writable={ray.get(ours.remote(pooled))}"),
        ]
    finally:
        ray.shutdown()


def bench_joblib(default_mb: int) -> list[tuple[str, str, str]]:
    import joblib
    from joblib import Parallel, delayed

    import pyshm.joblib  # noqa: F401 (registers the backend)

    x = pyshm.zeros(N)
    # Rounds alternate the two, each a median of 5, so that load from other work hits both.
    backend_times, exec_times = [], []
    with pyshm.ProcessPoolExecutor(2) as ex:
        for _ in range(5):
            with joblib.parallel_config(backend="pyshm", n_jobs=2):
                backend_times.append(median_of(lambda: Parallel()(delayed(add_one)(x) for _ in range(1))))
            exec_times.append(median_of(lambda: ex.submit(add_one, x).result()))
    ratios = sorted(b / e for b, e in zip(backend_times, exec_times))
    t_backend, t_exec = statistics.median(backend_times), statistics.median(exec_times)
    small = np.zeros(default_mb * 1024 * 1024 // 8)
    t_default = median_of(lambda: Parallel(n_jobs=2)(delayed(add_one)(small) for _ in range(1)), repeats=3)
    return [
        (
            "joblib W1 160 MB, backend 'pyshm'",
            fmt(t_backend),
            f"{t_backend / t_exec:.2f}x the executor (rounds: {', '.join(f'{r:.2f}x' for r in ratios)})",
        ),
        ("pyshm.ProcessPoolExecutor W1 160 MB", fmt(t_exec), ""),
        (f"joblib W1 {default_mb} MB plain, default loky backend", fmt(t_default), ""),
    ]


def add_one_by_handle(x: np.ndarray) -> np.ndarray:
    out = pyshm.empty_like(x)
    np.add(x, 1, out=out)
    return pyshm.by_handle(out)


def total(x: np.ndarray) -> float:
    return float(x.sum())


def count_tcp_bytes() -> None:
    """Count every byte Dask writes to a TCP comm in this process: ``TCP.write`` returns the
    bytes it queued (all frames of the message), and every Dask message over TCP goes through
    it, so the sum over all processes is what Dask sent over loopback. The count lives on the
    ``TCP`` class, so it is one per process however this function reaches a worker (by value)."""
    from distributed.comm.tcp import TCP

    if hasattr(TCP, "_bench_bytes"):
        return
    TCP._bench_bytes = 0
    write = TCP.write

    async def counted(self, msg, serializers=None, on_error="message"):
        n = await write(self, msg, serializers=serializers, on_error=on_error)
        TCP._bench_bytes += n
        return n

    TCP.write = counted


def tcp_bytes() -> int:
    from distributed.comm.tcp import TCP

    return TCP._bench_bytes


def lo_bytes() -> int:
    with open("/proc/net/dev") as f:
        for line in f:
            if line.strip().startswith("lo:"):
                return int(line.split(":")[1].split()[8])  # bytes transmitted
    return 0


def bench_dask() -> list[tuple[str, str, str]]:
    import warnings

    from distributed import Client, LocalCluster

    import pyshm.dask

    warnings.simplefilter("ignore")  # Dask's "large object in task graph" is the point here
    plain = np.zeros(N)
    pooled = pyshm.zeros(N)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            count_tcp_bytes()
            client.run(count_tcp_bytes)

            def sent() -> int:
                return tcp_bytes() + sum(client.run(tcp_bytes).values())

            def bytes_of(call) -> tuple[int, int]:
                """(bytes Dask wrote to TCP in all processes, loopback bytes) for one call.
                sent() itself sends (client.run): two reads in a row measure that, taken off."""
                b0 = sent()
                b1 = sent()
                l0 = lo_bytes()
                call()
                l1 = lo_bytes()
                b2 = sent()
                return b2 - b1 - (b1 - b0), l1 - l0

            def own() -> None:
                client.submit(add_one, plain, pure=False).result()

            def plain_arg() -> None:
                client.submit(total, plain, pure=False).result()

            def ours() -> None:
                r = client.submit(add_one, pooled, pure=False).result()
                assert pyshm.is_shared(r) and r[0] == 1.0

            t_own = median_of(own, repeats=3)
            b_own = bytes_of(own)
            t_plain_arg = median_of(plain_arg)
            b_plain_arg = bytes_of(plain_arg)
            pyshm.dask.install(client)
            b_plain_arg_after = bytes_of(plain_arg)
            # Plain arguments, installed cluster against a second one never installed, in
            # alternating rounds (load from other work hits both). The hooks are per process, so
            # the second cluster's client side runs through them too, but its workers and every
            # decision take Dask's path; the bytes above compare with the first cluster's own.
            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c2:
                with Client(c2) as other:
                    plain_ratios, plain_after, plain_other = [], [], []
                    for _ in range(3):
                        plain_other.append(median_of(lambda: other.submit(total, plain, pure=False).result()))
                        plain_after.append(median_of(plain_arg))
                        plain_ratios.append(plain_after[-1] / plain_other[-1])
            t_plain_arg_after = statistics.median(plain_after)
            t_ours = median_of(ours)
            b_ours = bytes_of(ours)
            t_by_handle = median_of(lambda: client.submit(add_one_by_handle, pyshm.by_handle(pooled), pure=False).result())

    def kb(b: tuple[int, int]) -> str:
        return f"{b[0] / 1e3:,.1f} kB to TCP (lo: {b[1] / 1e3:,.1f} kB)"

    rows = [
        ("Dask: submit 160 MB + 160 MB result, Dask's own path", fmt(t_own), kb(b_own)),
        ("Dask: the same, pooled array, pyshm.dask.install", fmt(t_ours), f"{t_own / t_ours:.0f}x faster, {kb(b_ours)}"),
        ("Dask: the same with by_handle on both sides", fmt(t_by_handle), f"{t_own / t_by_handle:.0f}x faster"),
        ("Dask: plain 160 MB argument (sum), before install", fmt(t_plain_arg), kb(b_plain_arg)),
        (
            "Dask: plain 160 MB argument (sum), after install",
            fmt(t_plain_arg_after),
            f"{kb(b_plain_arg_after)}; against a cluster never installed, rounds: "
            + ", ".join(f"{r:.2f}x" for r in sorted(plain_ratios)),
        ),
    ]
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--joblib-default-mb", type=int, default=16)
    p.add_argument("--only", choices=["joblib", "ray", "dask"], default=None)
    args = p.parse_args()
    print(machine_line())
    rows = []
    if args.only in (None, "joblib"):
        rows += bench_joblib(args.joblib_default_mb)
    if args.only in (None, "ray"):
        rows += bench_ray()
    if args.only in (None, "dask"):
        rows += bench_dask()
    width = max(len(r[0]) for r in rows)
    for name, t, note in rows:
        print(f"{name:<{width}}  {t:>10}  {note}")


if __name__ == "__main__":
    main()
