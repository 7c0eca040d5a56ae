"""``pyshm.ProcessPoolExecutor``: ``concurrent.futures.ProcessPoolExecutor`` with arrays in the pool.

It is the standard library's executor (a subclass: same constructor, methods, errors and
shutdown behaviour), with these additions:

1. Every call and every result travels as a :class:`~pyshm._transfer.Payload`, so numpy arrays
   in arguments and results, at any depth, go by handle: pooled ones as they are, others copied
   into the pool once. The caller's objects are never modified.
2. Each worker joins the caller's default pool and installs pyshm's numpy allocator (NEP 49)
   for arrays of at least ``allocator_min_bytes``, so a task's large results are born in the
   pool and ``return x + 1`` sends a handle, not a copy.
3. When a worker dies, the standard library fails every pending future with
   ``BrokenProcessPool`` (at once, never a hang). pyshm then waits for the pool's workers to
   exit, collects what they held, and drops the handles of calls no worker attached and of
   results no one read (a broken pool's unread results are discarded: the handles each dead
   worker made after both the submission of the first failed call and the making of the last
   of its results the manager read (a result carries its worker's pid and that time), and that
   nobody attached, are cancelled, including any such a task passed on elsewhere; a handle in a
   result that was read stays attachable).
4. A worker unpickles its task inside the task (not in multiprocessing's queue), so a task it
   cannot unpickle fails with :class:`~pyshm.PayloadError` and the worker lives on; the
   handles that task carried are dropped. This holds for any exception the unpickling raises,
   ``SystemExit`` and ``KeyboardInterrupt`` included.
5. A worker exits within a moment of the death of the process that created the executor (its
   owner; see ``_parentwatch``), busy or idle, under every start method. An idle worker leaves
   its pools first, as at a normal exit; a busy one exits at once, and what it held is
   reclaimed like a crashed process's (``collect()`` in a survivor, or ``clean`` once no member
   of the pool lives). A worker's main thread holds ``_task_lock`` from the moment it starts
   unpickling a task until that task's result is pickled, so the two never overlap.
6. A dead worker never leaves ``shutdown`` hanging. The standard library's manager thread, once
   shut down, sends one ``None`` per live worker and joins them all; a worker killed while it
   held the call queue's read lock (an idle worker waits for a task holding it) keeps the others
   from ever reading their ``None``, and a wake-up from ``shutdown`` can hide the death from the
   manager (CPython 3.9-3.13); a worker killed in the middle of sending its result leaves the
   manager reading a message that never ends, every future pending. So a guard thread watches
   each manager thread: once a worker is dead with a non-zero exit code, the manager must break
   the pool (or finish its shutdown) within ``STALL_GRACE_SECONDS``, or the remaining workers
   are terminated and this process's write end of the result pipe is closed; the manager then
   reads EOF and breaks the pool (``BrokenProcessPool`` for every pending future), its joins
   return, and what the workers held is collected. If it still waits, it is joining a feeder
   stuck writing to a full call pipe (CPython before 3.12, gh-94777): the call pipe's read end
   is closed too, and the feeder's write fails.
7. A call that can go to a worker at once is written to the call pipe by the submitting
   thread (``_direct_calls``: no hand-off to the manager and feeder threads), under a dispatch
   lock that the manager's ``add_call_item_to_queue`` holds too, so calls still leave in
   order; the future is running from then on, as when the manager sends it. Any other call
   takes the standard library's path, and pickles when it is sent.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process as _stdlib
import multiprocessing.connection
import os
import queue
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Iterator, Optional

from . import _allocator, _core, _mainref, _parentwatch, _pools
from ._direct_calls import DirectCalls
from ._native import NativePool
from ._transfer import ATOMIC, Packed, Payload, PayloadError

__all__ = ["DEFAULT_ALLOCATOR_MIN_BYTES", "ProcessPoolExecutor", "usable_cpus"]

#: Inside pyshm's workers, numpy arrays of at least this many bytes are allocated in the pool.
DEFAULT_ALLOCATOR_MIN_BYTES = 64 * 1024

BrokenProcessPool = _stdlib.BrokenProcessPool


def usable_cpus() -> int:
    """The number of CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: After a worker died, how long the manager thread may take to break the pool or finish its
#: shutdown before pyshm unsticks it (invariant 6).
STALL_GRACE_SECONDS = 1.0

#: How long a terminated worker may take to die before it is killed (invariant 6).
TERMINATE_GRACE_SECONDS = 2.0

#: How often the stall guard looks for workers started since it last looked.
GUARD_POLL_SECONDS = 0.5

#: The exit code of a worker that exits because its owner died.
OWNER_DIED_EXIT_CODE = 1

_task_lock = threading.Lock()
"""Held by a worker's main thread while it runs a task (invariant 5)."""


def _owner_died() -> None:
    """Runs in a worker's watch thread once the executor's owner is dead (invariant 5): leave
    the pools if no task runs, then exit."""
    if _task_lock.acquire(blocking=False):  # kept: no task may start now
        for native in NativePool.open_pools():  # as at a normal exit (``_pools``, invariant 1)
            try:
                native.leave()
            except BaseException:  # best effort: a survivor's collect() or clean does the rest
                pass
    os._exit(OWNER_DIED_EXIT_CODE)


def _init_worker(
    pool: str,
    min_bytes: Optional[int],
    initializer: Optional[Callable[..., Any]],
    initargs: tuple,
    owner: Optional[_parentwatch.Owner] = None,
) -> None:
    """Runs first in every worker: watch the owner, join the caller's pool as the default,
    install the allocator, then the user's initializer."""
    global _task_lock
    _task_lock = threading.Lock()  # a forked worker may inherit one its parent held
    if owner is not None:
        _parentwatch.watch(owner, _owner_died)
    native = _pools.pool_named(pool)
    _pools.adopt_default(native)
    if min_bytes is not None:
        _allocator.install_allocator(min_bytes=min_bytes, pool=_core.wrap_native(native))
    if initializer is not None:
        initializer(*initargs)


def _run_task(task: Packed) -> Any:
    """Runs in a worker: the call (unpickled from its payload here, so that a task that cannot
    be unpickled fails with :class:`PayloadError` instead of killing the worker), its result as
    a payload (``compact``: a small view of a large temporary is copied, not sent whole),
    pickled here, under ``_task_lock`` (invariant 5)."""
    with _task_lock:
        try:
            fn, args, kwargs = task.load()
        except PayloadError:
            raise
        except BaseException as e:  # SystemExit, KeyboardInterrupt, ... from a __reduce__ callable
            raise PayloadError(f"the worker could not unpickle its task: {type(e).__name__}: {e}") from e
        result = fn(*args, **kwargs)
        if type(result) in ATOMIC:  # nothing of the pool's in it: as the standard library sends it
            return result
        payload = Payload(result, compact=True, by_reference=_mainref.result_rule).freeze()
        return _Made(os.getpid(), time.monotonic(), payload)


class _Made:
    """A task's result as its worker sends it: the worker's pid and when the result's pickling
    ended (``CLOCK_MONOTONIC``, every process's clock) around the payload. The manager unwraps
    it and notes the time (invariant 3): that worker's tokens made before it may be in a result
    the caller holds, those made after it in a result nobody read."""

    __slots__ = ("pid", "made", "value")

    def __init__(self, pid: int, made: float, value: Any) -> None:
        self.pid = pid
        self.made = made
        self.value = value

    def __reduce__(self) -> Any:
        return (_Made, (self.pid, self.made, self.value))


class _ManagerThread(_stdlib._ExecutorManagerThread):
    """The standard library's manager thread, watched by a pyshm-stall-guard thread that
    unsticks it when a worker's death left it waiting forever (invariant 6)."""

    def __init__(self, executor: "ProcessPoolExecutor") -> None:
        super().__init__(executor)
        self.pipe_lock = executor._pyshm_pipe_lock
        self.direct: DirectCalls = executor._pyshm_direct

    def add_call_item_to_queue(self) -> None:
        # The standard library's (identical in CPython 3.9-3.13), under the dispatch lock
        # (invariant 7), and a call that `submit` already started (a direct write that found the
        # pipe full hands it over) is queued without being started again.
        with self.direct.lock:
            while not self.call_queue.full():
                try:
                    work_id = self.work_ids_queue.get(block=False)
                except queue.Empty:
                    return
                item = self.pending_work_items[work_id]
                if item.future.running() or item.future.set_running_or_notify_cancel():
                    self.call_queue.put(_stdlib._CallItem(work_id, item.fn, item.args, item.kwargs), block=True)
                else:
                    del self.pending_work_items[work_id]

    def run(self) -> None:
        try:
            super().run()
        finally:  # shut down, broken, or the executor is garbage: no more direct writes
            self.direct.close()

    def process_result_item(self, result_item: Any) -> None:
        # A result read: every token in it was made before its worker finished pickling it.
        # The broken pool's reclaim cancels only a worker's tokens made after the last of its
        # results read (invariant 3).
        made = getattr(result_item, "result", None)
        if type(made) is _Made:
            executor = self.executor_reference()
            if executor is not None:
                last = executor._pyshm_last_read
                last[made.pid] = max(last.get(made.pid, made.made), made.made)
            del executor
            result_item.result = made.value
        super().process_result_item(result_item)

    def start(self) -> None:
        super().start()
        guard = threading.Thread(target=_guard_manager, args=(self,), name="pyshm-stall-guard", daemon=True)
        guard.start()


def _guard_manager(manager: _ManagerThread) -> None:
    """Runs beside a manager thread, until it ends. Once a worker has died with a non-zero exit
    code, the manager must break the pool (or finish its shutdown) and end within
    ``STALL_GRACE_SECONDS``; if it does not, it waits on something the dead worker held: the
    remaining workers are terminated (killed if they linger), and if the manager still waits,
    this process's write end of the result pipe is closed, so that its read ends (EOF)."""
    while manager.is_alive():
        try:
            workers = list(manager.processes.values())
        except RuntimeError:  # changed while copied: look again
            continue
        if not any(p.exitcode not in (None, 0) for p in workers):
            sentinels = [p.sentinel for p in workers if p.exitcode is None]
            try:
                multiprocessing.connection.wait(sentinels, timeout=GUARD_POLL_SECONDS)
            except (OSError, ValueError):  # a worker's sentinel closed meanwhile
                time.sleep(GUARD_POLL_SECONDS)
            continue
        manager.join(STALL_GRACE_SECONDS)
        if not manager.is_alive():
            return
        for p in workers:
            if p.exitcode is None:
                p.terminate()
        deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
        for p in workers:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.exitcode is None:
                p.kill()
        manager.join(STALL_GRACE_SECONDS)
        with manager.pipe_lock:  # shutdown() closes the pipe only after the manager ended
            if manager.is_alive():  # reading a message whose writer died
                manager.result_queue._writer.close()
        manager.join(STALL_GRACE_SECONDS)
        if manager.is_alive():  # joining a feeder stuck writing a call nobody will read
            # CPython before 3.12 closes the call pipe's read end only after that join
            # (gh-94777): close it, and the feeder's write fails (EPIPE) and it ends.
            manager.call_queue._reader.close()
        manager.join()
        try:
            _core.collect()  # what the terminated workers held
        except Exception:  # the pool is closed already (interpreter exit)
            pass
        return


def _after(
    executor: "weakref.ref[ProcessPoolExecutor]", future: concurrent.futures.Future, payload: Payload, submitted: float
) -> None:
    """A call is over. Its arguments and their pickle are not needed any more, even if it was
    never sent (the future keeps this callback, and so the payload, for as long as it lives);
    its handles are, if no worker will attach them."""
    payload.obj = None
    payload.data = None
    ex = executor()
    if ex is not None:
        ex._after(future, payload, submitted)
    elif not future.cancelled() and isinstance(future.exception(), (BrokenProcessPool, PayloadError)):
        payload.release()


class ProcessPoolExecutor(concurrent.futures.ProcessPoolExecutor):
    """A drop-in for :class:`concurrent.futures.ProcessPoolExecutor` that sends numpy arrays
    through pyshm's pool (see the module doc).

    Parameters are the standard library's (``max_workers``, ``mp_context``, ``initializer``,
    ``initargs``, and ``max_tasks_per_child`` on Python 3.11+), plus:

    allocator_min_bytes
        Inside the workers, numpy arrays of at least this many bytes take their memory from the
        pool, so results come back without a copy. ``None`` leaves the workers' allocator alone
        (results are then copied into the pool once, when they are sent back).
    """

    def __init__(
        self,
        max_workers: Optional[int] = None,
        mp_context: Any = None,
        initializer: Optional[Callable[..., Any]] = None,
        initargs: tuple = (),
        *,
        max_tasks_per_child: Optional[int] = None,
        allocator_min_bytes: Optional[int] = DEFAULT_ALLOCATOR_MIN_BYTES,
    ) -> None:
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if allocator_min_bytes is not None and (not isinstance(allocator_min_bytes, int) or allocator_min_bytes < 0):
            raise ValueError(f"allocator_min_bytes must be None or a byte count >= 0, not {allocator_min_bytes!r}")
        # The pool exists before any worker starts, and its name is in the environment, so
        # workers of every start method join this pool rather than making their own.
        self._pyshm_pool = _core.default_pool()
        # Per worker pid, when the last result the manager read from it was made: the tokens
        # that worker made before that may be in a result the caller holds (invariant 3).
        self._pyshm_last_read: dict[int, float] = {}
        pool = self._pyshm_pool.name
        extra = {} if max_tasks_per_child is None else {"max_tasks_per_child": max_tasks_per_child}
        super().__init__(
            max_workers,
            mp_context,
            _init_worker,
            (pool, allocator_min_bytes, initializer, tuple(initargs), _parentwatch.owner()),
            **extra,
        )
        self._pyshm_broken_lock = threading.Lock()
        self._pyshm_pipe_lock = threading.Lock()  # invariant 6
        self._pyshm_reclaim_state: Optional[str] = None  # None, "waiting", "done"
        self._pyshm_to_release: list[Payload] = []
        self._pyshm_failed_since = float("inf")  # when the first call the break failed was submitted
        call_queue: Any = self._call_queue  # the standard library's _SafeQueue
        self._pyshm_direct: DirectCalls = DirectCalls(call_queue)  # invariant 7
        # Which functions and classes of __main__ the workers find by name (see _mainref).
        context = self._mp_context
        self._pyshm_by_reference = _mainref.by_reference_rule(None if context is None else context.get_start_method())

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        submitted = time.monotonic()
        payload = Payload((fn, args, kwargs), lazy=True, by_reference=self._pyshm_by_reference)
        direct = self._pyshm_direct
        if direct.may_send(self._call_queue, self._work_ids):
            # Pickled here only when it will be sent at once: a call queued behind others is
            # pickled (and its plain arrays copied into the pool) when it is sent.
            try:
                payload.freeze()
            except Exception:  # the feeder pickles it again and fails the future as the stdlib does
                pass
        future = self._pyshm_submit(payload)
        # Weakly: a future that outlives its executor must not keep it (and its workers) alive.
        executor = weakref.ref(self)
        future.add_done_callback(lambda f: _after(executor, f, payload, submitted))
        return future

    submit.__doc__ = concurrent.futures.ProcessPoolExecutor.submit.__doc__

    def _pyshm_submit(self, payload: Payload) -> concurrent.futures.Future:
        # The standard library's submit (identical in CPython 3.9-3.13) of `_run_task(payload)`,
        # which writes the call to the workers itself when it can (invariant 7).
        with self._shutdown_lock:
            refusal: Optional[Exception] = None
            if self._broken:
                refusal = BrokenProcessPool(self._broken)
            elif self._shutdown_thread:
                refusal = RuntimeError("cannot schedule new futures after shutdown")
            elif _stdlib._global_shutdown:
                refusal = RuntimeError("cannot schedule new futures after interpreter shutdown")
            if refusal is not None:
                payload.release()  # the handles `submit` froze for a direct write go back
                raise refusal
            f: concurrent.futures.Future = concurrent.futures.Future()
            work_id = self._queue_count
            self._queue_count += 1
            self._pending_work_items[work_id] = _stdlib._WorkItem(f, _run_task, (payload,), {})
            sent: Optional[bool] = False
            if payload.data is not None:
                item = _stdlib._CallItem(work_id, _run_task, (payload,), {})
                sent = self._pyshm_direct.send(self._call_queue, self._work_ids, item, f)
            if sent is None:  # nobody reads the call pipe: the pool broke or shut down meanwhile
                del self._pending_work_items[work_id]
                f.set_exception(BrokenProcessPool("the pool broke or shut down while the call was sent"))
            elif not sent:
                self._work_ids.put(work_id)
                self._executor_manager_thread_wakeup.wakeup()
            if self._safe_to_dynamically_spawn_children:
                self._adjust_process_count()
            self._start_executor_manager_thread()
            return f

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        # The standard library's (identical in CPython 3.9-3.13), except that the result pipe
        # is closed under `_pyshm_pipe_lock`, never at the same time as the stall guard closes
        # its write end (invariant 6).
        with self._shutdown_lock:
            self._cancel_pending_futures = cancel_futures
            self._shutdown_thread = True
            self._pyshm_direct.close()
            if self._executor_manager_thread_wakeup is not None:
                self._executor_manager_thread_wakeup.wakeup()
        if self._executor_manager_thread is not None and wait:
            self._executor_manager_thread.join()
        self._executor_manager_thread = None
        self._call_queue = None
        if self._result_queue is not None and wait:
            with self._pyshm_pipe_lock:
                self._result_queue.close()
        self._result_queue = None
        self._processes = None
        self._executor_manager_thread_wakeup = None

    shutdown.__doc__ = concurrent.futures.ProcessPoolExecutor.shutdown.__doc__

    def _start_executor_manager_thread(self) -> None:
        # The standard library's (identical in CPython 3.9-3.13), with pyshm's manager thread.
        if self._executor_manager_thread is None:
            if not self._safe_to_dynamically_spawn_children:  # fork: start the workers first
                self._launch_processes()
            self._executor_manager_thread = _ManagerThread(self)
            self._executor_manager_thread.start()
            _stdlib._threads_wakeups[self._executor_manager_thread] = self._executor_manager_thread_wakeup

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: Optional[float] = None,
        chunksize: int = 1,
        progress: bool = False,
    ) -> Iterator[Any]:
        """Like :meth:`concurrent.futures.Executor.map` (``chunksize`` sends that many calls
        as one task). With ``progress=True``, a tqdm progress bar counts the results as they
        are consumed (``pip install pyshm[progress]``)."""
        results = super().map(fn, *iterables, timeout=timeout, chunksize=chunksize)
        if not progress:
            return results
        from . import _progress

        return _progress.counted(results, _progress.bar(_progress.length_of(iterables), "pyshm map"))

    # -- a worker died ----------------------------------------------------------------------

    def _after(self, future: concurrent.futures.Future, payload: Payload, submitted: float) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if isinstance(error, PayloadError):  # the worker lives; nothing of the task was kept
            payload.release()
        if not isinstance(error, BrokenProcessPool):
            return
        self._pyshm_direct.close()
        with self._pyshm_broken_lock:
            state = self._pyshm_reclaim_state
            if state != "done":
                self._pyshm_to_release.append(payload)
                self._pyshm_failed_since = min(self._pyshm_failed_since, submitted)
            if state is None:
                self._pyshm_reclaim_state = "waiting"
                processes = list((self._processes or {}).values())
                name = "pyshm-reclaim"
                threading.Thread(target=self._reclaim, args=(processes,), name=name, daemon=True).start()
        if state == "done":  # a late failure: the workers are gone and collected already
            payload.release()

    def _reclaim(self, processes: list) -> None:
        """After ``BrokenProcessPool``: once the workers have exited (the standard library
        terminates the survivors), collect what they held and drop the handles that no worker
        attached (see the module doc)."""
        for p in processes:
            p.join(timeout=30)
        _core.collect()
        with self._pyshm_broken_lock:
            payloads, self._pyshm_to_release = self._pyshm_to_release, []
            self._pyshm_reclaim_state = "done"
            since = self._pyshm_failed_since
        # The results the workers sent and the owner never read (the manager stops reading
        # when it breaks the pool; a worker terminated while writing leaves half a message)
        # are discarded with the pipe: their handles would keep the arrays alive. Per worker,
        # only tokens made after the first failed call was submitted (a handle a worker made in
        # an earlier call and passed on elsewhere is left alone) and after that worker finished
        # pickling the last of its results the manager read (a token made before may be in a
        # result the caller holds, a task that returns `pyshm.handle(a)`, and is kept).
        # Every worker's pid: the pool checks that each is dead (`exitcode` can still say None
        # here when the manager thread reaped the worker while this thread waited on it).
        if since == float("inf"):
            return self._release(payloads)
        for pid in (p.pid for p in processes if p.pid is not None):
            cutoff = max(since, self._pyshm_last_read.get(pid, since))
            try:
                self._pyshm_pool._native.reclaim_tokens_of_dead([pid], time.monotonic() - cutoff)
            except (ValueError, OSError):  # the pool is closed already (interpreter exit)
                break
        self._release(payloads)

    @staticmethod
    def _release(payloads: list[Payload]) -> None:
        for payload in payloads:
            payload.release()
