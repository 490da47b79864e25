"""Work that must run to its end: shielded from cancellation, its errors logged, not raised.

The transaction scope and its savepoints both use these: a COMMIT, a ROLLBACK, a SAVEPOINT
statement and the callbacks that follow them finish even if the caller is cancelled, and an
error in a ``revertprecommit``, ``rollback`` or ``postcommit`` never masks the scope's outcome
nor stops the other operations of its phase.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine, Generator, Iterable
from typing import Any, Final, TypeVar

import anyio

from ._operations import Operation

__all__ = ["callbacks", "on_asyncio", "scope_cancelled", "settled", "uncancellable"]

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
    func: Callable[..., Coroutine[Any, Any, _T]], *args: Any
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
    """
    if not on_asyncio():
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

    The coroutine is stepped here: for each future it waits on, the task waits on a fresh
    stand-in future that the real one completes. ``task.cancel()`` cancels the stand-in
    (never the real one, so asyncpg's query is never cancelled); the ``CancelledError`` is
    kept in ``cancelled`` and the wait goes on. No task is created: a task per COMMIT cost
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
            # The work's own future: the task is told it does not wait on it, and waits on
            # stand-ins until it is done; then the work reads its result itself.
            waited._asyncio_future_blocking = False
            loop = asyncio.get_running_loop()
            while not waited.done():
                stand_in = loop.create_future()
                waited.add_done_callback(functools.partial(_wake, stand_in))
                stand_in._asyncio_future_blocking = True
                try:
                    yield stand_in
                except asyncio.CancelledError as exc:
                    self.cancelled = exc


def _wake(stand_in: asyncio.Future[None], _: object) -> None:
    if not stand_in.done():
        stand_in.set_result(None)


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
