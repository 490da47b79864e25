"""Work that must run to its end: shielded from cancellation, its errors logged, not raised.

The transaction scope and its savepoints both use these: a COMMIT, a ROLLBACK, a SAVEPOINT
statement and the callbacks that follow them finish even if the caller is cancelled, and an
error in a ``revertprecommit``, ``rollback`` or ``postcommit`` never masks the scope's outcome
nor stops the other operations of its phase.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Final, TypeVar, cast

import anyio

from ._operations import Operation

__all__ = ["callbacks", "scope_cancelled", "settled", "uncancellable"]

logger: Final = logging.getLogger("hookbus")

_T = TypeVar("_T")


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def uncancellable(func: Callable[..., Coroutine[Any, Any, _T]], *args: Any) -> _T:
    """Run ``func(*args)`` to its end even if the caller is cancelled meanwhile.

    A cancellation that arrived meanwhile is re-raised once the work is done (see
    ``settled``). A ``KeyboardInterrupt`` or ``SystemExit`` from the work is raised in the
    caller's task.
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

    An anyio shield keeps anyio's cancellation out; on asyncio the work also runs in its own
    task, because ``task.cancel()`` goes through any shield: a cancelled asyncpg query sends a
    cancel request to the server, which would abort a COMMIT still running deferred triggers.
    What the work raises is raised here at once, chained to a cancellation held meanwhile.
    """
    with anyio.CancelScope(shield=True):
        if not _on_asyncio():
            return await func(*args), None
        task = asyncio.get_running_loop().create_task(_carrying_fatal(func, args))
        cancelled: asyncio.CancelledError | None = None
        while True:
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError as exc:
                if task.done() and task.cancelled():
                    raise  # the work itself was cancelled, not only its caller
                cancelled = exc  # the caller's: kept, even if the work finished meanwhile
                if not task.done():
                    continue
            break
    if cancelled is not None:
        if task.cancelled():
            raise cancelled
        if task.exception() is not None:
            raise cancelled from task.exception()
    result, fatal = task.result()  # raises what the work raised
    if fatal is not None:
        raise fatal
    return cast(_T, result), cancelled


async def _carrying_fatal(
    func: Callable[..., Coroutine[Any, Any, _T]], args: tuple[Any, ...]
) -> tuple[_T | None, BaseException | None]:
    try:
        return await func(*args), None
    except (KeyboardInterrupt, SystemExit) as exc:
        return None, exc


def scope_cancelled() -> bool:
    """Tell whether the running task is being cancelled (by ``task.cancel()``, a timeout).

    A ``CancelledError`` that an operation raises while its task is not being cancelled is
    that operation's own error. Outside asyncio (trio), anyio raises cancellation only in a
    cancelled scope: it is the scope's.
    """
    if not _on_asyncio():
        return True
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


async def callbacks(ops: Iterable[Operation], phase: str) -> BaseException | None:
    """Run the ``phase`` method of every operation of ``ops``, whatever each raises.

    An error (an ``Exception``, or an operation's own ``CancelledError``) is logged on the
    ``hookbus`` logger; the other operations still run. Return the first
    ``KeyboardInterrupt`` or ``SystemExit``, which the caller raises once the phase has run.
    (The scope's postcommit loop is this one written out, for speed.)
    """
    fatal: BaseException | None = None
    for op in ops:
        try:
            await getattr(op, phase)()
        except (KeyboardInterrupt, SystemExit) as exc:
            if fatal is None:
                fatal = exc
        except BaseException:
            logger.exception("%s of %r failed", phase, op)
    return fatal
