"""pyshm.aio: asyncio front-end over pyshm's executor."""

from __future__ import annotations

import asyncio
import time

import anyio
import numpy as np
import pytest

import frontend_workers as fw
import pyshm
from pyshm import aio


@pytest.fixture
def executor(ctx):
    with pyshm.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        yield ex


def test_run_and_map_yield_every_chunk_and_chunks_are_views(executor):
    async def main():
        a = np.arange(1000.0)
        assert await aio.run(fw.chunk_total, a, executor=executor) == a.sum()
        got = {}
        async for s, total in aio.map(fw.chunk_total, a, chunk_size=64, executor=executor):
            got[(s.start, s.stop)] = total
        assert sorted(got) == [(i, min(i + 64, 1000)) for i in range(0, 1000, 64)]
        assert sum(got.values()) == a.sum()
        b = pyshm.asarray(np.arange(12.0).reshape(3, 4))
        shapes = [r async for _, r in aio.map(fw.chunk_double, b, chunk_size=3, axis=1, executor=executor)]
        assert sorted(shapes) == [(3, 1), (3, 3)]
        assert (b == 2 * np.arange(12.0).reshape(3, 4)).all()  # the workers wrote into b

    asyncio.run(main())
    assert executor.submit(fw.pid).result() > 0  # an executor passed in is never shut down


def test_the_event_loop_keeps_running_while_a_call_works(executor):
    flag = pyshm.zeros(1, np.int8)

    async def main():
        # The worker waits until the event loop sets the flag: if awaiting the call blocked
        # the loop, the flag would never be set and the worker would give up (returns False).
        call = asyncio.create_task(aio.run(fw.wait_for_flag, flag, 60.0, executor=executor))
        await asyncio.sleep(0.05)
        flag[0] = 1
        return await call

    assert asyncio.run(main()) is True


def test_cancelling_the_consumer_cancels_pending_chunks(ctx):
    with pyshm.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        counter = pyshm.zeros(40, np.int8)

        async def consume():
            async for _ in aio.map(_slow_count, counter, chunk_size=1, executor=ex):
                pass

        async def main():
            task = asyncio.create_task(consume())
            while counter.sum() == 0:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        ex.submit(fw.pid).result()  # everything still queued before this has run or was cancelled
    assert 0 < counter.sum() < 40


def _slow_count(chunk):
    time.sleep(0.05)
    chunk[0] = 1


def test_closing_the_generator_early_cancels_the_rest(ctx):
    with pyshm.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        counter = pyshm.zeros(40, np.int8)

        async def main():
            results = aio.map(_slow_count, counter, chunk_size=1, executor=ex)
            try:
                async for _ in results:
                    break
            finally:
                await results.aclose()

        asyncio.run(main())
        ex.submit(fw.pid).result()  # what was queued before this has run or was cancelled
    assert 0 < counter.sum() < 40


def test_works_under_anyio_and_with_the_default_executor():
    async def main():
        a = pyshm.asarray(np.arange(10.0))
        assert await aio.run(fw.chunk_total, a) == 45.0
        total = 0.0
        async for _, r in aio.map(fw.chunk_total, a, chunk_size=3):
            total += r
        return total

    assert anyio.run(main, backend="asyncio") == 45.0


def test_progress_counts_chunks(executor, capsys):
    async def main():
        return [r async for _, r in aio.map(fw.chunk_total, np.ones(40), chunk_size=10, executor=executor, progress=True)]

    assert sorted(asyncio.run(main())) == [10.0] * 4
    assert "4/4" in capsys.readouterr().err


def test_bad_arguments():
    async def main():
        with pytest.raises(ValueError, match="chunk_size"):
            async for _ in aio.map(fw.chunk_total, np.ones(3), chunk_size=0):
                pass
        with pytest.raises(ValueError, match="at least one dimension"):
            async for _ in aio.map(fw.chunk_total, np.float64(1)):
                pass

    asyncio.run(main())
