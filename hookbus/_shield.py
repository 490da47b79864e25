"""Work that must run to its end: shielded from cancellation, its errors logged, not raised.

The transaction scope and its savepoints both use these: a COMMIT, a ROLLBACK and the
callbacks that follow them finish even if the caller is cancelled, and an error in a
``revertprecommit`` or ``rollback`` never masks the error that caused it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

import anyio

from ._operations import Operation

__all__ = ["quietly", "uncancellable"]

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

    An anyio shield keeps anyio's cancellation out; on asyncio the work also runs in its own
    task, because ``task.cancel()`` goes through any shield: a cancelled asyncpg query sends a
    cancel request to the server, which would abort a COMMIT still running deferred triggers.
    A cancellation that arrived meanwhile is re-raised once the work is done.
    """
    with anyio.CancelScope(shield=True):
        if not _on_asyncio():
            return await func(*args)
        task = asyncio.get_running_loop().create_task(func(*args))
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
        if task.cancelled() or task.exception() is None:
            raise cancelled
        raise cancelled from task.exception()
    return task.result()


async def quietly(func: Callable[[], Coroutine[Any, Any, None]], op: Operation) -> None:
    """Await ``func()``, a callback of ``op``; log an ``Exception`` from it, never raise it."""
    try:
        await func()
    except Exception:
        logger.exception("%s of %r failed", func.__name__, op)
