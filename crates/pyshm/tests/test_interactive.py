"""Code defined interactively (``python -c``, a Jupyter kernel) runs in every front-end under
fork, spawn and forkserver: functions, lambdas and classes of ``__main__``, and closures over
instances of such classes, travel by value (cloudpickle)."""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import METHODS

# One cell per paragraph; the first sets METHOD.
CELLS = [
    """
import asyncio
import multiprocessing as mp

import numpy as np
import pyshm
from pyshm import aio
""",
    """
def add_one(a):
    return a + 1


class Scale:
    def __init__(self, k):
        self.k = k

    def apply(self, a):
        return a * self.k


def doubled(s, a):
    return Scale(s.k * 2), s.apply(a)
""",
    """
a = pyshm.asarray(np.arange(10.0))
ex = pyshm.ProcessPoolExecutor(2, mp.get_context(METHOD))
assert np.array_equal(ex.submit(add_one, a).result(), a + 1)
assert ex.submit(lambda x: x * 2, 21).result() == 42
s2, out = ex.submit(doubled, Scale(3), a).result()
assert type(s2) is Scale and s2.k == 6 and np.array_equal(out, a * 3)
assert list(ex.map(add_one, [1, 2])) == [2, 3]
""",
    """
async def chunks():
    assert np.array_equal(await aio.run(add_one, a, executor=ex), a + 1)
    total = 0.0
    async for _, part in aio.map(lambda c: float((c * 2).sum()), a, chunk_size=3, executor=ex):
        total += part
    return total


async def run_aio():
    return await chunks()
""",
    "AIO_CALL",
    """
ex.shutdown()


def map_with_a_closure():
    scale = Scale(5)
    out = pyshm.alloc(10)

    def kernel(worker_id, index, value):
        out[index] = scale.apply(value) + worker_id * 0

    context = pyshm.ProcessContext(2, METHOD)
    try:
        pyshm.map(kernel, a, context=context)
    finally:
        context.close()
    return out


assert np.array_equal(map_with_a_closure(), a * 5)
print("all front-ends ok")
""",
]


def script(method: str, in_notebook: bool) -> list[str]:
    call = "assert await run_aio() == 90.0" if in_notebook else "assert asyncio.run(run_aio()) == 90.0"
    return [f"METHOD = {method!r}"] + [call if c == "AIO_CALL" else c for c in CELLS]


@pytest.mark.parametrize("method", METHODS)
def test_python_c(method):
    code = "\n".join(script(method, in_notebook=False))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "all front-ends ok" in r.stdout


@pytest.mark.parametrize("method", METHODS)
def test_jupyter_kernel(method):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in script(method, in_notebook=True)]
    client = NotebookClient(nb, timeout=240, kernel_name="python3", allow_errors=False)
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream"]
    assert "all front-ends ok" in "".join(outputs)
