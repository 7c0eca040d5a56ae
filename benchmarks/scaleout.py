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
  returns an array of the same size (160 MB): Dask's own path (plain arrays) and
  ``pyshm.dask.install`` with ``by_handle`` on both sides.
Medians of 5 after a warm-up.
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
    with joblib.parallel_config(backend="pyshm", n_jobs=2):
        t_backend = median_of(lambda: Parallel()(delayed(add_one)(x) for _ in range(1)))
    with pyshm.ProcessPoolExecutor(2) as ex:
        t_exec = median_of(lambda: ex.submit(add_one, x).result())
    small = np.zeros(default_mb * 1024 * 1024 // 8)
    t_default = median_of(lambda: Parallel(n_jobs=2)(delayed(add_one)(small) for _ in range(1)), repeats=3)
    return [
        ("joblib W1 160 MB, backend 'pyshm'", fmt(t_backend), f"{t_backend / t_exec:.2f}x the executor"),
        ("pyshm.ProcessPoolExecutor W1 160 MB", fmt(t_exec), ""),
        (f"joblib W1 {default_mb} MB plain, default loky backend", fmt(t_default), ""),
    ]


def add_one_by_handle(x: np.ndarray) -> np.ndarray:
    out = pyshm.empty_like(x)
    np.add(x, 1, out=out)
    return pyshm.by_handle(out)


def bench_dask() -> list[tuple[str, str, str]]:
    import warnings

    from distributed import Client, LocalCluster

    import pyshm.dask

    warnings.simplefilter("ignore")  # Dask's "large object in task graph" is the point here
    plain = np.zeros(N)
    pooled = pyshm.zeros(N)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            pyshm.dask.install(client)
            t_own = median_of(lambda: client.submit(add_one, plain, pure=False).result(), repeats=3)
            t_ours = median_of(lambda: client.submit(add_one_by_handle, pyshm.by_handle(pooled), pure=False).result())
    return [
        ("Dask: submit 160 MB + 160 MB result, Dask's own path", fmt(t_own), ""),
        ("Dask: the same, pyshm.dask + by_handle", fmt(t_ours), f"{t_own / t_ours:.0f}x faster"),
    ]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--joblib-default-mb", type=int, default=16)
    args = p.parse_args()
    print(machine_line())
    rows = bench_joblib(args.joblib_default_mb) + bench_ray() + bench_dask()
    width = max(len(r[0]) for r in rows)
    for name, t, note in rows:
        print(f"{name:<{width}}  {t:>10}  {note}")


if __name__ == "__main__":
    main()
