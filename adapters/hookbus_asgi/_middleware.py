"""A transaction scope per HTTP request, ended before the response starts.

The request runs inside ``hookbus_asyncpg.transaction(pool)``, in the request's own task
(a pure ASGI middleware: what the scope sets in context variables reaches the endpoint, and
nothing runs in a child task). The scope ends when the application sends
``http.response.start``: the middleware holds that message, commits or rolls back by its
status, and only then sends it, or, if the end of the scope failed, an error response in its
place (the application's body is then dropped). So a COMMIT that fails is never answered
with a 2xx, and postcommit operations (which run inside COMMIT's lifecycle) have run before
the client sees the response.

Where the response start is sent from another task than the request's (Starlette's
``StreamingResponse`` under an ASGI 2.3 server such as uvicorn streams from a child task),
the scope cannot be ended there: its context variable belongs to the request's task. The
middleware then holds the whole response until the application returns, ends the scope in
the request's task, and sends it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final, final

import anyio
import hookbus_asyncpg

from hookbus import ValidationError

from ._errors import (
    NOT_COMMITTED,
    ErrorMapper,
    ErrorResponse,
    commit_on_success,
    error_response,
    is_retryable,
)
from ._types import (
    ASGIApp,
    Isolation,
    Message,
    PoolSource,
    Receive,
    Scope,
    Send,
    check_pool_source,
    resolve_pool,
    scope_options,
)

__all__ = ["TransactionMiddleware"]

logger: Final = logging.getLogger("hookbus.asgi")


class _RollBack(Exception):
    """Handed to the scope's ``__aexit__`` to end it with a rollback."""


_ROLL_BACK: Final = _RollBack("the response status asks for a rollback")


@final
class TransactionMiddleware:
    """Run each HTTP request in its own ``hookbus_asyncpg.transaction(pool)`` scope.

    ``pool`` is an ``asyncpg.Pool``, or a function returning it (for a pool opened in the
    lifespan). The scope commits when the response starts with a status ``commit_on``
    accepts (default: below 400), and rolls back otherwise, when the application raises,
    when it returns without a response, and when the client disconnected before the
    response. ``isolation``, ``readonly`` and ``deferrable`` are passed to the scope.

    What an exception raised by the request or by its COMMIT answers is ``errors(exc)``
    (default :func:`error_response`: ``ValidationError`` 422 with its JSON, a conflict 409,
    an unknown COMMIT outcome 503); where it returns ``None``, an exception from the
    application propagates (the framework or server answers 500), and a COMMIT failure is
    answered 500. ``retries`` re-runs the whole request in a new scope after a serialization
    failure or a deadlock, as long as no response was sent and the request body read so far
    (up to ``replay_limit`` bytes) can be replayed. Websockets and lifespan pass through.
    """

    __slots__ = ("_commit_on", "_errors", "_options", "_pool", "_replay_limit", "_retries", "app")

    def __init__(
        self,
        app: ASGIApp,
        pool: PoolSource,
        *,
        commit_on: Callable[[int], bool] = commit_on_success,
        errors: ErrorMapper = error_response,
        retries: int = 0,
        replay_limit: int = 1 << 20,
        isolation: Isolation | None = None,
        readonly: bool = False,
        deferrable: bool = False,
    ) -> None:
        if not callable(commit_on):
            raise TypeError("commit_on must be a function of the status: int -> bool")
        if not callable(errors):
            raise TypeError("errors must be a function: exception -> ErrorResponse | None")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, not {retries!r}")
        if isinstance(replay_limit, bool) or not isinstance(replay_limit, int) or replay_limit < 0:
            raise ValueError(f"replay_limit must be an int >= 0, not {replay_limit!r}")
        check_pool_source(pool)
        options = scope_options(isolation, readonly, deferrable)
        self.app = app
        self._pool = pool
        self._commit_on = commit_on
        self._errors = errors
        self._retries = retries
        self._replay_limit = replay_limit
        self._options = options

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replay = _Replay(receive, self._replay_limit if self._retries else 0)
        for attempt in range(self._retries + 1):
            request = _Request(self, send, replay, may_retry=attempt < self._retries)
            if await request.run(scope):
                return
            logger.info("retrying a request after a conflict (attempt %d)", attempt + 2)


@final
class _Replay:
    """The request's receive channel, recording the body so that a retry can read it again."""

    __slots__ = ("_limit", "_receive", "_recorded", "_size", "replayable")

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self._recorded: list[Message] = []
        self._size = 0
        self.replayable = limit > 0

    def reader(self) -> Receive:
        """A receive callable for one attempt: the recorded messages, then the live ones."""
        position = 0

        async def receive() -> Message:
            nonlocal position
            if position < len(self._recorded):
                position += 1
                return self._recorded[position - 1]
            message = await self._receive()
            if self.replayable:
                if message["type"] == "http.request":
                    self._size += len(message.get("body", b""))
                    if self._size <= self._limit:
                        self._recorded.append(message)
                        position += 1
                    else:
                        self.replayable = False
                        self._recorded.clear()
                else:  # a disconnect: there is no one to answer a retry
                    self.replayable = False
            return message

        return receive


@final
class _Request:
    """One attempt at one request: its scope, and the response held until the scope ends."""

    __slots__ = (
        "_cm",
        "_disconnected",
        "_ended",
        "_held",
        "_may_retry",
        "_mw",
        "_replay",
        "_retry",
        "_send_downstream",
        "_started",
        "_swallow",
        "_task",
        "receive",
    )

    def __init__(
        self, mw: TransactionMiddleware, send: Send, replay: _Replay, *, may_retry: bool
    ) -> None:
        self._mw = mw
        self._send_downstream = send
        self._replay = replay
        self._may_retry = may_retry
        upstream = replay.reader()

        async def receive() -> Message:
            message = await upstream()
            if message["type"] == "http.disconnect":
                self._disconnected = True
            return message

        self.receive = receive
        self._cm: Any = None
        self._task = 0
        self._ended = False  # the scope has committed or rolled back
        self._started = False  # a response start went downstream
        self._swallow = False  # the application's messages are dropped (answered otherwise)
        self._held: list[Message] | None = None
        self._disconnected = False
        self._retry = False

    async def run(self, scope: Scope) -> bool:
        """Run the application once; ``False`` when the request should be run again."""
        mw = self._mw
        self._cm = hookbus_asyncpg.transaction(resolve_pool(mw._pool), **mw._options)
        await self._cm.__aenter__()
        self._task = anyio.get_current_task().id
        try:
            await mw.app(scope, self.receive, self.send)
        except Exception as exc:
            if not self._ended:
                await self._end(commit=False)
            if self._started or not await self._answer(exc, from_app=True):
                raise
            return not self._retry
        except BaseException:  # cancelled: the scope still rolls back (shielded)
            if not self._ended:
                await self._end(commit=False)
            raise
        if not self._ended:
            held = self._held
            if held is None:  # the application returned without a response
                await self._end(commit=False)
            else:  # the response came from another task: end the scope here, then send it
                error = await self._end(commit=self._commits(held[0]["status"]))
                if error is not None:
                    await self._answer(error, from_app=False)
                else:
                    for message in held:
                        await self._send_downstream(message)
        return not self._retry

    async def send(self, message: Message) -> None:
        """The application's send: ends the scope at the response start, then passes it on."""
        if self._swallow:
            return
        if self._held is not None:
            self._held.append(message)
            return
        if message["type"] == "http.response.start" and not self._ended:
            if anyio.get_current_task().id != self._task:
                self._held = [message]
                return
            error = await self._end(commit=self._commits(message["status"]))
            if error is not None:
                self._swallow = True
                await self._answer(error, from_app=False)
                return
            self._started = True
        await self._send_downstream(message)

    def _commits(self, status: int) -> bool:
        return not self._disconnected and bool(self._mw._commit_on(status))

    async def _end(self, *, commit: bool) -> Exception | None:
        """End the scope (its ``__aexit__``: the connection goes back); return its error."""
        self._ended = True
        try:
            if commit:
                await self._cm.__aexit__(None, None, None)
            else:
                await self._cm.__aexit__(_RollBack, _ROLL_BACK, None)
        except Exception as exc:
            return exc
        return None

    async def _answer(self, exc: Exception, *, from_app: bool) -> bool:
        """Answer ``exc`` (or ask for a retry); ``False`` when it must propagate instead."""
        if self._may_retry and is_retryable(exc) and self._replay.replayable:
            self._retry = self._swallow = True
            return True
        response = self._mw._errors(exc)
        if response is None:
            if from_app:
                return False
            logger.error("COMMIT failed; answered 500", exc_info=exc)
            response = NOT_COMMITTED
        elif not isinstance(exc, ValidationError):
            logger.warning("request answered %d: %s", response.status, exc, exc_info=exc)
        await self._send_error(response)
        return True

    async def _send_error(self, response: ErrorResponse) -> None:
        start, body = response.messages()
        self._started = True
        await self._send_downstream(start)
        await self._send_downstream(body)
