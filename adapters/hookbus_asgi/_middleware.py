"""A transaction scope per HTTP request, ended before the response starts.

The request runs inside the scope its factory opens (``hookbus_asyncpg.transaction(pool)``
by default), in the request's own task
(a pure ASGI middleware: what the scope sets in context variables reaches the endpoint, and
nothing runs in a child task). The scope ends when the application sends
``http.response.start``: the middleware holds that message, commits or rolls back by its
status, and only then sends it, or, if the end of the scope failed, an error response in its
place (the application's body is then dropped). So a COMMIT that fails is never answered
with a 2xx, and postcommit operations (which run inside COMMIT's lifecycle) have run before
the client sees the response.

A client that leaves while the handler runs is seen at once: the request's ``receive`` is
read by a task of its own (:mod:`._listener`), which, once the body is in, cancels the
handler on ``http.disconnect`` while the scope is open; the scope then rolls back (its
rollback is shielded). After the response start, a disconnect cancels nothing: the scope
has ended, and what the application does after its body (background tasks) runs on.

Where the response start is sent from another task than the request's (Starlette's
``StreamingResponse`` under an ASGI 2.3 server such as uvicorn streams from a child task),
the scope cannot be ended there: its context variable belongs to the request's task. The
middleware then holds the whole response until the application returns, ends the scope in
the request's task, and sends it.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import logging
from collections.abc import Callable
from typing import Any, Final, final

import anyio

from hookbus import Transaction, ValidationError

from ._asyncpg import Isolation
from ._errors import (
    NOT_COMMITTED,
    ErrorMapper,
    commit_on_success,
    error_response,
    is_retryable,
)
from ._listener import Listener, expects_continue
from ._running import KEY, RunningScopes
from ._scopes import opened, scope_factory
from ._types import ASGIApp, Message, PoolSource, Receive, Scope, ScopeFactory, Send

__all__ = ["TransactionMiddleware"]

logger: Final = logging.getLogger("hookbus.asgi")


class _RollBack(Exception):
    """Handed to the scope's ``__aexit__`` to end it with a rollback."""


_ROLL_BACK: Final = _RollBack("the response status asks for a rollback")


@final
class TransactionMiddleware:
    """Run each HTTP request in its own transaction scope, opened by ``transaction()``.

    ``transaction`` is what opens a scope: a function returning an async context manager
    that yields a ``hookbus.Transaction``, called once per request, e.g. ``lambda:
    hookbus_asyncpg.transaction(app.state.pool)`` or ``asyncpg_transactions(pool,
    isolation=...)`` (options checked when the application is built). The scope commits
    when the response starts with a status ``commit_on`` accepts (default: below 400), and
    rolls back otherwise, when the application raises, when it returns without a response,
    and when the client disconnects before the response: the middleware watches for it
    while the handler runs (once the body is read) and cancels the handler.

    What an exception raised by the request or by its COMMIT answers is ``errors(exc)``
    (default :func:`error_response`: ``ValidationError`` 422 with its JSON, a conflict 409,
    an unknown COMMIT outcome 503); where it returns ``None``, an exception from the
    application propagates (the framework or server answers 500), and a COMMIT failure is
    answered 500. ``retries`` re-runs the whole request in a new scope after a serialization
    failure or a deadlock, as long as no response was sent and the request body read so far
    (up to ``replay_limit`` bytes) can be replayed. Websockets and lifespan pass through.

    Deprecated, for one release (a ``DeprecationWarning`` says what to write instead): an
    ``asyncpg.Pool``, or a function returning one, in place of ``transaction`` (or as
    ``pool=``), with ``isolation``, ``readonly`` and ``deferrable``.
    """

    __slots__ = ("_policy", "_replay_limit", "_retries", "_running", "app")

    def __init__(
        self,
        app: ASGIApp,
        transaction: ScopeFactory | PoolSource | None = None,
        *,
        pool: PoolSource | None = None,
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
        factory = scope_factory(
            "TransactionMiddleware",
            transaction,
            pool=pool,
            isolation=isolation,
            readonly=readonly,
            deferrable=deferrable,
        )
        self.app = app
        self._policy = _Policy(app, factory, commit_on, errors)
        self._running: RunningScopes | None = None  # else the lifespan's, from scope["state"]
        self._retries = retries
        self._replay_limit = replay_limit

    def _around(self, app: ASGIApp, running: RunningScopes) -> TransactionMiddleware:
        """The same middleware (its options checked already) around another application,
        its scopes recorded in ``running`` (the Litestar plugin's lifespan waits for them)."""
        policy = self._policy
        around = copy.copy(self)
        around.app = app
        around._running = running
        around._policy = _Policy(app, policy.open_scope, policy.commit_on, policy.errors)
        return around

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deferred = expects_continue(scope.get("headers", ()))
        listener = Listener(receive, wait_for_the_application=deferred)
        running = self._running
        if running is None:
            state = scope.get("state")
            running = state.get(KEY) if state is not None else None
        # The listener's task is not awaited: a request need not wait for it to unwind (a
        # task group would cost the request two turns of the event loop).
        watcher = asyncio.get_running_loop().create_task(listener.run())
        try:
            await self._attempts(scope, listener, send, running)
        finally:
            watcher.cancel()

    async def _attempts(
        self, scope: Scope, listener: Listener, send: Send, running: RunningScopes | None
    ) -> None:
        replay = _Replay(listener.receive, self._replay_limit if self._retries else 0)
        for attempt in range(self._retries + 1):
            may_retry = attempt < self._retries and not listener.gone
            request = _Request(self._policy, send, replay, listener, running, may_retry=may_retry)
            if await request.run(scope):
                return
            logger.info("retrying a request after a conflict (attempt %d)", attempt + 2)


@final
class _Policy:
    """What every request of one middleware shares: read-only once built."""

    __slots__ = ("app", "commit_on", "errors", "open_scope")

    def __init__(
        self,
        app: ASGIApp,
        open_scope: ScopeFactory,
        commit_on: Callable[[int], bool],
        errors: ErrorMapper,
    ) -> None:
        self.app = app
        self.open_scope = open_scope
        self.commit_on = commit_on
        self.errors = errors


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


class _Stage(enum.Enum):
    """Where one attempt at a request stands."""

    OPEN = "open"  # the scope is open, nothing was sent
    ENDING = "ending"  # the response start came: the scope is ending (COMMIT, postcommit)
    HOLDING = "holding"  # the start came from another task: every message held till the end
    PASSING = "passing"  # the scope ended by the status: the application's response goes out
    ENDED = "ended"  # the scope ended before any response (the application raised or returned)
    REPLACED = "replaced"  # an answer of ours went out, or a retry is due: the app's is dropped


@final
class _Request:
    """One attempt at one request: its scope, and the response held until the scope ends."""

    __slots__ = (
        "_cancel",
        "_cm",
        "_disconnected",
        "_doing",
        "_held",
        "_may_retry",
        "_policy",
        "_replay",
        "_running",
        "_send_downstream",
        "_stage",
        "_task",
        "receive",
        "retry",
    )

    def __init__(
        self,
        policy: _Policy,
        send: Send,
        replay: _Replay,
        listener: Listener,
        running: RunningScopes | None,
        *,
        may_retry: bool,
    ) -> None:
        self._policy = policy
        self._running = running
        self._doing = ""  # the request, as the shutdown's log names it
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
        self._task: asyncio.Task[Any] | None = None
        self._stage = _Stage.OPEN
        self._held: list[Message] = []
        self._disconnected = listener.gone
        self._cancel = anyio.CancelScope()
        listener.on_gone = self._client_gone
        #: Set when the request should be run again in a new scope (a conflict).
        self.retry = False

    def _client_gone(self) -> None:
        """The client disconnected: while the scope is open, the handler is cancelled."""
        self._disconnected = True
        if self._stage in (_Stage.OPEN, _Stage.HOLDING):
            self._cancel.cancel()  # run() then rolls the scope back

    async def run(self, scope: Scope) -> bool:
        """Run the application once; ``False`` when the request should be run again."""
        running = self._running
        if running is None:
            return await self._run(scope)
        self._doing = f"{scope.get('method')} {scope.get('path')}"
        running.enter(self, f"{self._doing} (running)")
        try:
            return await self._run(scope)
        finally:
            running.leave(self)

    async def _run(self, scope: Scope) -> bool:
        policy = self._policy
        self._cm = policy.open_scope()
        tx = await self._cm.__aenter__()
        if not isinstance(tx, Transaction):
            await self._end(commit=False)
            opened(tx, "TransactionMiddleware")  # raises: it says what the factory yielded
        self._task = asyncio.current_task()
        try:
            with self._cancel:  # cancelled when the client leaves while the scope is open
                if self._disconnected:
                    self._cancel.cancel()
                await policy.app(scope, self.receive, self.send)
        except Exception as exc:
            if self._stage in (_Stage.OPEN, _Stage.HOLDING):
                await self._end(commit=False)
                self._stage = _Stage.ENDED
            if self.retry:
                return False
            if self._stage is not _Stage.ENDED or not await self._answer(exc, from_app=True):
                raise  # a response went out already, or nothing maps this error
            return not self.retry
        except BaseException:  # cancelled: the scope still rolls back (shielded)
            if self._stage in (_Stage.OPEN, _Stage.HOLDING):
                await self._end(commit=False)
            raise
        if self._stage is _Stage.OPEN:  # the application returned without a response
            await self._end(commit=False)
        elif self._stage is _Stage.HOLDING:  # end the scope in the request's task, then send
            error = await self._end(commit=self._commits(self._held[0]["status"]))
            if self._disconnected:
                return not self.retry  # the client left: no one to answer
            if error is not None:
                await self._answer(error, from_app=False)
            else:
                for message in self._held:
                    await self._send_downstream(message)
        return not self.retry

    async def send(self, message: Message) -> None:
        """The application's send: ends the scope at the response start, then passes it on."""
        stage = self._stage
        if stage is _Stage.OPEN and message["type"] == "http.response.start":
            if asyncio.current_task() is not self._task:
                stage = self._stage = _Stage.HOLDING
            else:
                self._stage = _Stage.ENDING  # a client leaving now no longer cancels
                error = await self._end(commit=self._commits(message["status"]))
                if error is not None:
                    await self._answer(error, from_app=False)
                    return
                stage = self._stage = _Stage.PASSING
        if stage is _Stage.HOLDING:
            self._held.append(message)
        elif stage is not _Stage.REPLACED:  # dropped there: an answer of ours went out
            # PASSING; or a body before any start (OPEN, ENDED), for the server to refuse
            await self._send_downstream(message)

    def _commits(self, status: int) -> bool:
        return not self._disconnected and bool(self._policy.commit_on(status))

    async def _end(self, *, commit: bool) -> Exception | None:
        """End the scope (its ``__aexit__``: the connection goes back); return its error."""
        running = self._running
        if running is not None:
            running.enter(self, f"{self._doing} ({'COMMIT, postcommit' if commit else 'rollback'})")
        try:
            if commit:
                await self._cm.__aexit__(None, None, None)
            else:
                await self._cm.__aexit__(_RollBack, _ROLL_BACK, None)
        except Exception as exc:
            return exc
        finally:
            if running is not None:
                running.leave(self)
        return None

    async def _answer(self, exc: Exception, *, from_app: bool) -> bool:
        """Answer ``exc`` in place of the application (or ask for a retry).

        ``False`` when nothing maps an exception raised by the application: it propagates.
        """
        if (
            self._may_retry
            and not self._disconnected
            and is_retryable(exc)
            and self._replay.replayable
        ):
            self.retry = True
            self._stage = _Stage.REPLACED
            return True
        response = self._policy.errors(exc)
        if response is None:
            if from_app:
                return False
            logger.error("COMMIT failed; answered 500", exc_info=exc)
            response = NOT_COMMITTED
        elif not isinstance(exc, ValidationError):
            logger.warning("request answered %d: %s", response.status, exc, exc_info=exc)
        self._stage = _Stage.REPLACED
        start, body = response.messages()
        await self._send_downstream(start)
        await self._send_downstream(body)
        return True
