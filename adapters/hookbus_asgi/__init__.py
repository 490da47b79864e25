"""hookbus for ASGI web back ends: server events from the lifespan, a transaction per request.

>>> scopes = lambda: hookbus_asyncpg.transaction(pool)  # doctest: +SKIP
>>> app = LifespanMiddleware(  # doctest: +SKIP
...     SessionMiddleware(TransactionMiddleware(asgi_app, scopes), bus), bus
... )

- :class:`LifespanMiddleware` / :func:`server_events`: ``server_startup`` before the server
  serves, ``server_shutdown`` after it, always; a failing startup hook stops the server; the
  shutdown first waits (``shutdown_wait`` s at most) for request scopes still ending.
- :class:`TransactionMiddleware`: each HTTP request in its own scope, opened by a factory
  (``lambda: hookbus_asyncpg.transaction(pool)``, or :func:`asyncpg_transactions`),
  committed before the response starts.
- :class:`SessionMiddleware`: ``session_open`` / ``session_close`` around each connection.

Framework integrations live in submodules imported only when used: ``hookbus_asgi.fastapi``
and ``hookbus_asgi.litestar``.
"""

from __future__ import annotations

from ._asyncpg import asyncpg_transactions
from ._errors import ErrorMapper, ErrorResponse, commit_on_success, error_response, is_retryable
from ._lifespan import LifespanMiddleware, server_events
from ._middleware import TransactionMiddleware
from ._sessions import SessionMiddleware
from ._types import ASGIApp, PoolSource, ScopeFactory

__all__ = [
    "ASGIApp",
    "ErrorMapper",
    "ErrorResponse",
    "LifespanMiddleware",
    "PoolSource",
    "ScopeFactory",
    "SessionMiddleware",
    "TransactionMiddleware",
    "asyncpg_transactions",
    "commit_on_success",
    "error_response",
    "is_retryable",
    "server_events",
]
