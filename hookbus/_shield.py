"""Work that must run to its end: shielded from cancellation, its errors logged, not raised.

The transaction scope and its savepoints both use these: a COMMIT, a ROLLBACK, a SAVEPOINT
statement and the callbacks that follow them finish even if the caller is cancelled, and an
error in a ``revertprecommit``, ``rollback`` or ``postcommit`` never masks the scope's outcome
nor stops the other operations of its phase.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Generator, Iterable
from typing import Any, Final, TypeVar, final

import anyio

from ._operations import Operation

__all__ = [
    "callbacks",
    "in_own_task",
    "on_asyncio",
    "scope_cancelled",
    "settled",
    "uncancellable",
]

logger: Final = logging.getLogger("hookbus")

_T = TypeVar("_T")


def on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def uncancellable(func: Callable[..., Coroutine[Any, Any, _T]], *args: Any) -> _T:
    """Run ``func(*args)`` to its end even if the caller is cancelled meanwhile.

    A cancellation that arrived meanwhile is re-raised once the work is done (see
    ``settled``).
    """
    result, cancelled = await settled(func, *args)
    if cancelled is not None:
        raise cancelled
    return result


async def settled(
    func: Callable[..., Coroutine[Any, Any, _T]], *args: Any, asyncio_running: bool | None = None
) -> tuple[_T, BaseException | None]:
    """Run ``func(*args)`` to its end even if the caller is cancelled meanwhile; return its
    result and the cancellation that arrived meanwhile (``None`` if none), for the caller to
    raise when it is ready.

    On asyncio, ``task.cancel()`` goes through any shield (it cancels the future the task
    waits for: a cancelled asyncpg query sends a cancel request to the server, which would
    abort a COMMIT still running deferred triggers), so the work runs in the caller's task
    behind ``_Guarded``, which never lets the task wait on the work's own futures: a
    cancellation, asyncio's or anyio's (anyio cancels asyncio tasks with ``task.cancel()``
    too), lands on a stand-in and is kept. (An anyio scope cancelled meanwhile retries its
    cancellation at every turn of the loop until the work is done: each one is kept.) No
    anyio shield is needed there, which saved 4 us a call. Elsewhere (trio), an anyio shield
    keeps the cancellation out, and the caller's next checkpoint raises it. If the work
    raises while a cancellation is kept, the cancellation is raised, from it.
    ``asyncio_running``: what ``on_asyncio()`` says, where the caller asked already (on 3.11
    each asking is a ``getpid()`` system call).
    """
    if not (on_asyncio() if asyncio_running is None else asyncio_running):
        with anyio.CancelScope(shield=True):
            return await func(*args), None
    guarded = _Guarded(func(*args))
    try:
        result = await guarded
    except BaseException as exc:
        cancelled = guarded.cancelled
        if cancelled is None or isinstance(exc, asyncio.CancelledError):
            raise
        raise cancelled from exc
    return result, guarded.cancelled


class _Guarded:
    """Await a coroutine in the calling task, out of reach of ``task.cancel()``.

    The coroutine is stepped here: for each future it waits on, the task waits on a
    ``_StandIn`` whose done callbacks are the real future's (the task wakes as soon as the
    real one is done). ``task.cancel()`` cancels the stand-in, which keeps the
    ``CancelledError`` in ``cancelled`` and never touches the real future (so asyncpg's query
    is never cancelled); the wait goes on. (A stand-in future completed by a callback of the
    real one cost a turn of the loop per wait: an ``epoll_wait`` system call and the loop's
    bookkeeping, twice per COMMIT.) No task is created: a task per COMMIT cost
    several microseconds, and a KeyboardInterrupt in the work stays in the caller's task.
    """

    __slots__ = ("_coro", "cancelled")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self.cancelled: asyncio.CancelledError | None = None

    def __await__(self) -> Generator[Any, None, Any]:
        send = self._coro.send
        while True:
            try:
                waited = send(None)
            except StopIteration as stop:
                return stop.value
            if waited is None:  # a bare yield (asyncio.sleep(0)): one turn of the loop
                try:
                    yield None
                except asyncio.CancelledError as exc:
                    self.cancelled = exc
                continue
            # The work's own future: the task waits on a stand-in for it, whose completion is
            # the future's (the task's wake-up is the future's own callback: no turn of the
            # loop more), and whose cancel() is kept here, never passed on. Then the work reads
            # the future's result itself (an error it holds is thrown in here first: skipped).
            waited._asyncio_future_blocking = False
            while not waited.done():
                try:
                    yield _StandIn(waited, self)
                except BaseException:
                    if not waited.done():
                        raise


@final
class _StandIn:
    """What the task waits on in place of the work's future ``future`` (see ``_Guarded``).

    To asyncio's task it is a future: its loop, its done callbacks and ``done()`` are
    ``future``'s; ``cancel()`` keeps the ``CancelledError`` in ``guard.cancelled`` and says
    it cancelled, so that ``task.cancel()`` goes no further (the task goes on waiting for
    ``future``). A fresh stand-in per wait, each told whether the task blocks on it.
    """

    __slots__ = ("_asyncio_future_blocking", "_future", "_guard")

    def __init__(self, future: Any, guard: _Guarded) -> None:
        self._future = future
        self._guard = guard
        self._asyncio_future_blocking = True

    def get_loop(self) -> asyncio.AbstractEventLoop:
        loop: asyncio.AbstractEventLoop = self._future.get_loop()
        return loop

    def add_done_callback(self, callback: Callable[..., object], *, context: Any = None) -> None:
        self._future.add_done_callback(callback, context=context)

    def remove_done_callback(self, callback: Callable[..., object]) -> int:
        removed: int = self._future.remove_done_callback(callback)
        return removed

    def done(self) -> bool:
        return bool(self._future.done())

    def cancelled(self) -> bool:
        return False  # what cancel() is told is kept, never done to the work's future

    def cancel(self, msg: Any = None) -> bool:
        error = asyncio.CancelledError() if msg is None else asyncio.CancelledError(msg)
        self._guard.cancelled = error
        return True


async def in_own_task(func: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
    """Await ``func(*args)`` run in a task of its own (on asyncio), for work run under
    ``settled`` that runs the application's code or a driver's timeouts.

    ``settled`` keeps every ``task.cancel()`` of the task it runs in, and a timeout inside the
    work (``asyncio.timeout``, ``asyncio.wait_for`` from 3.12, an anyio cancel scope, asyncpg's
    wait for a cancelled statement) cancels that very task: kept, it would never fire, and it
    would be raised once the work is done, a cancellation no one asked of the caller. In a task
    of its own, the work's timeouts cancel that task; the caller's cancellation is still kept
    by ``settled`` (which waits on the task without cancelling it). A ``KeyboardInterrupt`` or
    ``SystemExit`` of the work is raised here, in the caller's task, not out of the loop.
    Outside asyncio (trio), anyio's shield already leaves the work's own cancel scopes alone.
    """
    if not on_asyncio():
        await func(*args)
        return
    fatal = await asyncio.get_running_loop().create_task(_carried(func(*args)))
    if fatal is not None:
        raise fatal


async def _carried(coro: Coroutine[Any, Any, None]) -> BaseException | None:
    """Run ``coro``; return its ``KeyboardInterrupt`` or ``SystemExit`` (asyncio would raise
    them out of the loop), else None."""
    try:
        await coro
    except (KeyboardInterrupt, SystemExit) as exc:
        return exc
    return None


def scope_cancelled() -> bool:
    """Tell whether the running task is being cancelled (by ``task.cancel()``, a timeout).

    A ``CancelledError`` that an operation raises while its task is not being cancelled is
    that operation's own error. Outside asyncio (trio), anyio raises cancellation only in a
    cancelled scope: it is the scope's.
    """
    if not on_asyncio():
        return True
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


async def callbacks(ops: Iterable[Operation], phase: str) -> BaseException | None:
    """Run the ``phase`` method of every operation of ``ops``, whatever each raises.

    An error (an ``Exception``, or an operation's own ``CancelledError``) is logged on the
    ``hookbus`` logger; the other operations still run. Return the first
    ``KeyboardInterrupt`` or ``SystemExit``, which the caller raises once the phase has run.
    (The scope's postcommit loop is this one written out, for speed.) An operation whose
    class does not override ``phase`` is skipped: its inherited no-op is not awaited (the
    class is asked at each call, so a class patched in a test is seen). The postcommit loop
    does not skip: the test cost an operation that overrides postcommit more than it saved.
    """
    fatal: BaseException | None = None
    default = getattr(Operation, phase)
    for op in ops:
        if getattr(type(op), phase) is default:
            continue  # its class does not override the phase: nothing to run (nor to await)
        try:
            await getattr(op, phase)()
        except (KeyboardInterrupt, SystemExit) as exc:
            if fatal is None:
                fatal = exc
        except BaseException:
            logger.exception("%s of %r failed", phase, op)
    return fatal
