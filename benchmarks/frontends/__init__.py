"""pyshm's front-ends against the standard library and the other shared-memory tools (issue 6).

    python benchmarks/frontends                      (or: cargo xtask bench)
    python benchmarks/frontends --quick              few repeats, fewer W3 arrays: a smoke run
    python benchmarks/frontends --only W1,W3 --tools pyshm,stdlib --json out.json
    python benchmarks/check.py                       compiles and imports every benchmark module

Every tool (``tools``: numpy, stdlib, shared_memory, pyshm, npshmex, SharedArray, joblib, pasha)
runs with 2 workers; "-" in a table: the tool has no way to do it. The workloads, one module each:

- W1 (``w1_roundtrip``): ``ex.submit(add_one, x).result()``, x 160 MB.
- W2 (``w2_write_shared``): 100 tasks write ``x[i] = i`` into a shared 80 MB array.
- W3 (``w3_create_free``): create and free a 1 KiB or 1 MiB shared array, empty or filled.
- W4 (``w4_return_arrays``): 16 tasks return 32 MB each; the parent sums them.
- W5 (``w5_row_sums``): 10,000 row-sum tasks on a shared 1000x1000 array, in tasks/s.

The rest: ``harness`` (timing, one measuring process per workload and tool, the checks, the
/dev/shm and leftover-process watch; its doc says how it measures), ``report`` (the header, the
tables, the JSON), ``__main__`` (the command line and the list of workloads); ``common`` one
directory up holds the formatting that ``run.py`` and ``plot.py`` share.

The exit status is 0 unless the harness itself fails or the stdlib or pyshm rows crash, hang
or give wrong results; peers that are missing or broken are reported, never fatal. Figures
worth keeping go to docs/performance.md with the machine and the date; ``benchmarks/plot.py``
draws the JSON as an SVG.

Importing this package or any of its modules runs nothing: no benchmark, no process, and no
import of pyshm or of a peer (those happen inside the functions that measure them).
"""
