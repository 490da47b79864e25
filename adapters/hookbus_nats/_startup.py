"""A worker's start-up checks, waiting for JetStream to answer.

In the seconds after a server of a JetStream cluster dies, the stream has no leader: its API
times out or answers "no responders" until an election ends. A worker starting then waits and
asks again (with backoff, saying what it waits for) rather than exiting, up to a bound past
which it fails with :class:`JetStreamNotReadyError`. The worker's ``stop()`` ends the wait at
once, a question in flight included.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import nats.errors
import nats.js.errors

from hookbus import HookbusError

__all__ = ["JetStreamNotReadyError", "when_ready"]

# What JetStream answers while it has no leader (or is not there yet): worth asking again.
_NOT_READY: Final = (
    asyncio.TimeoutError,  # nats.errors.TimeoutError is one
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
)
_FIRST_PAUSE: Final = 0.1
_LONGEST_PAUSE: Final = 5.0


class JetStreamNotReadyError(HookbusError):
    """JetStream did not answer for a stream within a worker's start-up wait (no leader
    elected, JetStream not enabled, or the server unreachable all along)."""


async def when_ready(
    ask: Callable[[], Awaitable[Any]],
    stream: str,
    *,
    wait: float,
    logger: logging.Logger,
    stop: asyncio.Event | None = None,
) -> Any:
    """What ``ask()`` returns (the start-up checks of a worker on ``stream``), asked again
    while JetStream does not answer, for ``wait`` seconds at most; ``None`` as soon as
    ``stop`` is set, whether a pause or a question to the server is under way (that question
    is cancelled: its answer, if it comes, is dropped).

    Raises :class:`JetStreamNotReadyError` once ``wait`` has passed; any other error (no such
    stream, a bad request) at once.
    """
    deadline = time.monotonic() + wait
    pause = _FIRST_PAUSE
    while True:
        try:
            asked, answer = await _unless_stopped(ask, stop)
        except _NOT_READY as exc:
            why = type(exc).__name__
            left = deadline - time.monotonic()
            if left <= 0:
                raise JetStreamNotReadyError(
                    f"no JetStream leader for stream {stream!r} after {wait:g} s ({why})"
                ) from None
            pause = min(pause, left)
            logger.warning(
                "no JetStream leader for stream %r yet (%s); asking again in %.2f s",
                stream,
                why,
                pause,
            )
        else:
            return answer if asked else None
        if stop is None:
            await asyncio.sleep(pause)
        else:
            try:
                await asyncio.wait_for(stop.wait(), pause)
            except TimeoutError:
                pass
            else:
                return None
        pause = min(pause * 2, _LONGEST_PAUSE)


async def _unless_stopped(
    ask: Callable[[], Awaitable[Any]], stop: asyncio.Event | None
) -> tuple[bool, Any]:
    """``(True, ask())``, or ``(False, None)`` once ``stop`` is set (``ask()`` cancelled)."""
    if stop is None:
        return True, await ask()
    if stop.is_set():
        return False, None
    asking = asyncio.ensure_future(ask())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((asking, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when the caller is cancelled: nothing is left running
        for task in (asking, stopping):
            task.cancel()
        await asyncio.wait((asking, stopping))
    if stop.is_set():
        if not asking.cancelled():
            asking.exception()  # retrieved: an error of a question nobody waits for is moot
        return False, None
    return True, asking.result()
