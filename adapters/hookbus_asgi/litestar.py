"""Litestar: one plugin for the server events, session events and a transaction per request.

>>> app = Litestar(  # doctest: +SKIP
...     route_handlers=[...],
...     lifespan=[open_pool],  # opens the pool the hooks and requests use
...     plugins=[HookbusPlugin(bus, lambda: app.state.pool)],
... )

The plugin appends to the application's configuration: a lifespan context emitting
``server_startup`` / ``server_shutdown`` (after the application's own lifespan contexts are
entered, so the pool exists), then ``SessionMiddleware`` and ``TransactionMiddleware`` as
middleware, and exception handlers answering hookbus's errors as ``errors`` maps them
(``ValidationError`` 422 with its JSON...). Litestar turns a handler's exception into a
response inside the middleware stack: the transaction middleware sees that response's status
(4xx or 5xx) and rolls back.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, final

import asyncpg
from litestar import Litestar, Request, Response
from litestar.config.app import AppConfig
from litestar.plugins import InitPlugin

from hookbus import Bus, CommitOutcomeUnknownError, TransactionAbortedError, ValidationError

from ._errors import ErrorMapper, error_response
from ._lifespan import server_events
from ._middleware import TransactionMiddleware
from ._sessions import SessionMiddleware
from ._types import ASGIApp, PoolSource

__all__ = ["HookbusPlugin"]


@final
class HookbusPlugin(InitPlugin):
    """Server events from the lifespan, session events, and a transaction per HTTP request.

    ``pool`` is an ``asyncpg.Pool`` or a function returning it; ``sessions=False`` leaves out
    the session events, ``transactions=False`` the per-request scope. Other keyword arguments
    go to ``TransactionMiddleware`` (``commit_on``, ``errors``, ``retries``, ``isolation``...).
    """

    __slots__ = ("_bus", "_options", "_pool", "_sessions", "_transactions")

    def __init__(
        self,
        bus: Bus,
        pool: PoolSource | None = None,
        *,
        sessions: bool = True,
        transactions: bool = True,
        **options: Any,
    ) -> None:
        if not isinstance(bus, Bus):
            raise TypeError(f"bus must be a hookbus.Bus, not {type(bus).__name__}")
        if transactions and pool is None:
            raise ValueError("a pool (or a function returning it) is needed for transactions")
        self._bus = bus
        self._pool = pool
        self._sessions = sessions
        self._transactions = transactions
        self._options = options
        if transactions:  # refuse bad options now, not at the first request
            TransactionMiddleware(_no_app, pool, **options)

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Add the lifespan context and the middleware to the application's configuration."""
        app_config.lifespan = [*app_config.lifespan, self._lifespan]
        middleware: list[Any] = []
        if self._sessions:
            middleware.append(self._session_middleware)
        if self._transactions:
            middleware.append(self._transaction_middleware)
        app_config.middleware = [*app_config.middleware, *middleware]
        errors: ErrorMapper = self._options.get("errors", error_response)

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
                asyncpg.PostgresError,
            )
        }
        app_config.exception_handlers = {**handlers, **app_config.exception_handlers}
        return app_config

    def _lifespan(self, app: Litestar) -> AbstractAsyncContextManager[None]:
        return server_events(self._bus, app)

    def _session_middleware(self, app: ASGIApp) -> ASGIApp:
        return SessionMiddleware(app, self._bus)

    def _transaction_middleware(self, app: ASGIApp) -> ASGIApp:
        assert self._pool is not None
        return TransactionMiddleware(app, self._pool, **self._options)


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("never called")  # pragma: no cover
