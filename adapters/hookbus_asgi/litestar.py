"""Litestar: one plugin for the server events, session events and a transaction per request.

>>> app = Litestar(  # doctest: +SKIP
...     route_handlers=[...],
...     lifespan=[open_pool],  # opens the pool the hooks and requests use
...     plugins=[HookbusPlugin(bus, lambda: hookbus_asyncpg.transaction(app.state.pool))],
... )

The plugin appends to the application's configuration: a lifespan context emitting
``server_startup`` / ``server_shutdown`` (after the application's own lifespan contexts are
entered, so the pool exists), then ``SessionMiddleware`` and ``TransactionMiddleware`` as
middleware, and exception handlers answering hookbus's errors as ``errors`` maps them
(``ValidationError`` 422 with its JSON...). The lifespan's shutdown waits for the request
scopes still running, ``shutdown_wait`` seconds at most (10 by default). Litestar turns a
handler's exception into a response inside the middleware stack: the transaction middleware
sees that response's status (4xx or 5xx) and rolls back.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, final

from litestar import Litestar, Request, Response
from litestar.config.app import AppConfig
from litestar.plugins import InitPlugin

from hookbus import Bus, CommitOutcomeUnknownError, TransactionAbortedError, ValidationError

from ._errors import ErrorMapper, database_errors, error_response
from ._lifespan import _server_events
from ._middleware import TransactionMiddleware
from ._running import DEFAULT_WAIT, RunningScopes, check_wait
from ._sessions import SessionMiddleware
from ._types import ASGIApp, PoolSource, ScopeFactory

__all__ = ["HookbusPlugin"]


@final
class HookbusPlugin(InitPlugin):
    """Server events from the lifespan, session events, and a transaction per HTTP request.

    ``transaction`` opens each request's scope, as for ``TransactionMiddleware`` (``lambda:
    hookbus_asyncpg.transaction(app.state.pool)``; a pool is deprecated); ``sessions=False``
    leaves out the session events, ``transactions=False`` the per-request scope. Other
    keyword arguments go to ``TransactionMiddleware`` (``commit_on``, ``errors``,
    ``retries``...).
    """

    __slots__ = ("_bus", "_errors", "_middleware", "_running", "_sessions", "_shutdown_wait")

    def __init__(
        self,
        bus: Bus,
        transaction: ScopeFactory | PoolSource | None = None,
        *,
        sessions: bool = True,
        transactions: bool = True,
        shutdown_wait: float = DEFAULT_WAIT,
        **options: Any,
    ) -> None:
        if not isinstance(bus, Bus):
            raise TypeError(f"bus must be a hookbus.Bus, not {type(bus).__name__}")
        if transactions and transaction is None and options.get("pool") is None:
            raise ValueError(
                "what opens a scope is needed for transactions: HookbusPlugin(bus, lambda: "
                "hookbus_asyncpg.transaction(pool)), or transactions=False"
            )
        self._bus = bus
        self._sessions = sessions
        self._shutdown_wait = check_wait(shutdown_wait)
        self._running = RunningScopes()
        self._errors: ErrorMapper = options.get("errors", error_response)
        # Built now, so that bad options are refused here and not at the first request.
        self._middleware = (
            TransactionMiddleware(_no_app, transaction, **options) if transactions else None
        )

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Add the lifespan context and the middleware to the application's configuration."""
        app_config.lifespan = [*app_config.lifespan, self._lifespan]
        middleware: list[Any] = []
        if self._sessions:
            middleware.append(self._session_middleware)
        if self._middleware is not None:
            middleware.append(self._transaction_middleware)
        app_config.middleware = [*app_config.middleware, *middleware]
        errors = self._errors

        def answer(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
            response = errors(exc)
            if response is None:
                raise exc
            return Response(
                response.body, status_code=response.status, media_type="application/json"
            )

        handlers: dict[Any, Any] = {
            kind: answer
            for kind in (
                ValidationError,
                CommitOutcomeUnknownError,
                TransactionAbortedError,
                *database_errors(),
            )
        }
        app_config.exception_handlers = {**handlers, **app_config.exception_handlers}
        return app_config

    def _lifespan(self, app: Litestar) -> AbstractAsyncContextManager[Any]:
        return _server_events(self._bus, app, self._running, self._shutdown_wait)

    def _session_middleware(self, app: ASGIApp) -> ASGIApp:
        return SessionMiddleware(app, self._bus)

    def _transaction_middleware(self, app: ASGIApp) -> ASGIApp:
        assert self._middleware is not None
        return self._middleware._around(app, self._running)


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("never called")  # pragma: no cover
