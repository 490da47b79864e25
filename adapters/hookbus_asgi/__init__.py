"""hookbus for ASGI web back ends: server events from the lifespan, a transaction per request.

>>> app = LifespanMiddleware(  # doctest: +SKIP
...     SessionMiddleware(TransactionMiddleware(asgi_app, pool), bus), bus
... )

- :class:`LifespanMiddleware` / :func:`server_events`: ``server_startup`` before the server
  serves, ``server_shutdown`` after it, always; a failing startup hook stops the server.
- :class:`TransactionMiddleware`: each HTTP request in its own
  ``hookbus_asyncpg.transaction(pool)`` scope, committed before the response starts.
- :class:`SessionMiddleware`: ``session_open`` / ``session_close`` around each connection.

Framework integrations live in submodules imported only when used: ``hookbus_asgi.fastapi``
and ``hookbus_asgi.litestar``.
"""

from __future__ import annotations

from ._errors import ErrorMapper, ErrorResponse, commit_on_success, error_response, is_retryable
from ._lifespan import LifespanMiddleware, server_events
from ._middleware import TransactionMiddleware
from ._sessions import SessionMiddleware
from ._types import ASGIApp, PoolSource

__all__ = [
    "ASGIApp",
    "ErrorMapper",
    "ErrorResponse",
    "LifespanMiddleware",
    "PoolSource",
    "SessionMiddleware",
    "TransactionMiddleware",
    "commit_on_success",
    "error_response",
    "is_retryable",
    "server_events",
]
