"""Server events from the ASGI lifespan: ``server_startup`` first, ``server_shutdown`` last.

Two forms of the same rule. ``server_events(bus, app)`` is an async context manager for a
framework's own ``lifespan=`` (Starlette, FastAPI, Litestar). ``LifespanMiddleware`` wraps any
ASGI application and speaks the lifespan protocol itself, around the application's own
lifespan if it has one.

The rule: ``server_startup`` runs once the application's own start-up is done (its pool
exists) and before the server accepts a request; ``server_shutdown`` runs whenever
``server_startup`` was emitted, even if a startup hook failed, before the application's own
shut-down (the pool is still open). Before it, the shutdown waits for the request scopes
still running (a COMMIT, a postcommit) up to ``shutdown_wait`` seconds, then logs those it
abandons (see ``_running``). A startup hook that raises makes start-up fail
(``lifespan.startup.failed``): a server run with ``--lifespan on`` then exits instead of
serving a half-initialised application.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, MutableMapping
from typing import Any, Final, final

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from hookbus import Bus, ServerEvent

from ._running import DEFAULT_WAIT, KEY, RunningScopes, check_wait, wait_for_scopes
from ._types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["LifespanMiddleware", "server_events"]

logger: Final = logging.getLogger("hookbus.asgi")


async def _startup(bus: Bus, app: Any) -> None:
    await bus.emit("server_startup", ServerEvent("server_startup", app))


async def _shutdown(bus: Bus, app: Any) -> None:
    await bus.emit("server_shutdown", ServerEvent("server_shutdown", app))


async def _shutdown_after_failure(bus: Bus, app: Any) -> None:
    try:
        await _shutdown(bus, app)
    except Exception:
        logger.exception("server_shutdown failed after a failed server_startup")


def server_events(
    bus: Bus, app: Any = None, *, shutdown_wait: float = DEFAULT_WAIT
) -> contextlib.AbstractAsyncContextManager[dict[str, Any]]:
    """Emit ``server_startup`` on entry and ``server_shutdown`` on exit, always.

    For a framework's lifespan, inside the block that opens what the hooks need; yield the
    state it gives, so that the shutdown can wait for the requests' scopes::

        @contextlib.asynccontextmanager
        async def lifespan(app):
            async with asyncpg.create_pool(DSN) as pool:
                app.state.pool = pool
                async with hookbus_asgi.server_events(bus, app) as state:
                    yield state

    If a startup hook raises, ``server_shutdown`` is still emitted (its own errors logged)
    and the startup error propagates: the framework answers ``lifespan.startup.failed``.
    The state (the ASGI lifespan state, which the server copies into each request's scope)
    carries the scopes ``TransactionMiddleware`` opens: on exit, before ``server_shutdown``,
    those still running (a COMMIT, a postcommit) are waited for, ``shutdown_wait`` seconds at
    most (10 by default), and those left are logged as abandoned.
    """
    return _server_events(bus, app, RunningScopes(), check_wait(shutdown_wait))


@contextlib.asynccontextmanager
async def _server_events(
    bus: Bus, app: Any, running: RunningScopes, shutdown_wait: float
) -> AsyncIterator[dict[str, Any]]:
    try:
        await _startup(bus, app)
    except BaseException:
        await _shutdown_after_failure(bus, app)
        raise
    try:
        yield {KEY: running}
    except BaseException:
        await wait_for_scopes(running, shutdown_wait)
        await _shutdown_after_failure(bus, app)
        raise
    await wait_for_scopes(running, shutdown_wait)
    await _shutdown(bus, app)


@final
class LifespanMiddleware:
    """Wrap an ASGI application so that the server's lifespan emits the server events.

    ``LifespanMiddleware(app, bus)`` passes every HTTP and websocket connection through and
    answers the lifespan protocol itself: the wrapped application's own lifespan (if it has
    one) starts first and stops last; ``server_startup`` and ``server_shutdown`` run inside
    it. ``server_app`` is what the events carry as ``app`` (the wrapped application if not
    given). Run the server with the lifespan forced on (``uvicorn --lifespan on``): with
    ``auto``, uvicorn takes a startup error for "lifespan unsupported" and serves anyway.

    The shutdown first waits for the request scopes ``TransactionMiddleware`` still runs (a
    COMMIT, a postcommit), ``shutdown_wait`` seconds at most (10 by default), and logs those
    it abandons; they are found through the ASGI lifespan state, which the server copies into
    each request's scope.
    """

    __slots__ = ("_bus", "_server_app", "_shutdown_wait", "app")

    def __init__(
        self,
        app: ASGIApp,
        bus: Bus,
        *,
        server_app: Any = None,
        shutdown_wait: float = DEFAULT_WAIT,
    ) -> None:
        if not isinstance(bus, Bus):
            raise TypeError(f"bus must be a hookbus.Bus, not {type(bus).__name__}")
        self.app = app
        self._bus = bus
        self._server_app = app if server_app is None else server_app
        self._shutdown_wait = check_wait(shutdown_wait)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        running = RunningScopes()
        state: MutableMapping[str, Any] | None = scope.get("state")
        if state is not None:  # a server without lifespan state: no request is tracked
            state[KEY] = running
        lifespan = _Lifespan(self.app, self._bus, self._server_app, scope)
        await lifespan.run(receive, send, running, self._shutdown_wait)


@final
class _Lifespan:
    """One lifespan of the server: the wrapped application's runs in a task beside it."""

    __slots__ = ("_app", "_bus", "_from_app", "_inner", "_scope", "_server_app", "_to_app")

    def __init__(self, app: ASGIApp, bus: Bus, server_app: Any, scope: Scope) -> None:
        self._app = app
        self._bus = bus
        self._server_app = server_app
        self._scope = scope
        self._to_app: MemoryObjectSendStream[Message]
        self._from_app: MemoryObjectReceiveStream[Message]
        self._inner = True  # the wrapped application speaks the lifespan protocol

    async def run(
        self, receive: Receive, send: Send, running: RunningScopes, shutdown_wait: float
    ) -> None:
        to_app, app_receive = anyio.create_memory_object_stream[Message](1)
        app_send, from_app = anyio.create_memory_object_stream[Message](1)
        self._to_app, self._from_app = to_app, from_app
        async with anyio.create_task_group() as tg, to_app, from_app:
            tg.start_soon(self._run_app, app_receive, app_send)
            message = await receive()
            if message["type"] != "lifespan.startup":
                raise RuntimeError(f"expected lifespan.startup, got {message['type']!r}")
            reply = await self._ask(message)
            if reply is not None and reply["type"] == "lifespan.startup.failed":
                await send(reply)  # the application's own start-up failed: no hook ran
                return
            try:
                await _startup(self._bus, self._server_app)
            except Exception as exc:
                logger.exception("server_startup failed: the server must not serve")
                await _shutdown_after_failure(self._bus, self._server_app)
                await self._ask({"type": "lifespan.shutdown"})
                await send({"type": "lifespan.startup.failed", "message": _describe(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            if message["type"] != "lifespan.shutdown":
                raise RuntimeError(f"expected lifespan.shutdown, got {message['type']!r}")
            await wait_for_scopes(running, shutdown_wait)
            failures: list[str] = []
            try:
                await _shutdown(self._bus, self._server_app)
            except Exception as exc:
                logger.exception("server_shutdown failed")
                failures.append(_describe(exc))
            reply = await self._ask(message)
            if reply is not None and reply["type"] == "lifespan.shutdown.failed":
                failures.append(str(reply.get("message", "")))
            if failures:
                await send({"type": "lifespan.shutdown.failed", "message": "; ".join(failures)})
            else:
                await send({"type": "lifespan.shutdown.complete"})

    async def _run_app(
        self, receive: MemoryObjectReceiveStream[Message], send: MemoryObjectSendStream[Message]
    ) -> None:
        async with receive, send:
            try:
                await self._app(self._scope, receive.receive, send.send)
            except Exception:
                # As uvicorn does: an application that raises before answering start-up does
                # not speak the lifespan protocol; after that, its failure is its answer.
                logger.debug("the wrapped application's lifespan raised", exc_info=True)

    async def _ask(self, message: Message) -> Message | None:
        """Hand ``message`` to the wrapped application and return its answer (None: gone)."""
        if not self._inner:
            return None
        try:
            await self._to_app.send(message)
            return await self._from_app.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._inner = False
            return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
