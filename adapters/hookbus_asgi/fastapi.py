"""FastAPI: the request's transaction scope as a dependency, and the error answers as handlers.

>>> Tx = Annotated[AsyncpgTransaction, transaction(lambda: app.state.pool)]  # doctest: +SKIP
>>> @app.post("/people")  # doctest: +SKIP
... async def add(tx: Tx) -> dict[str, int]: ...

The dependency is declared ``Depends(..., scope="function")``: FastAPI runs its exit (the
COMMIT) when the endpoint returns, before the response is sent, so a failed COMMIT becomes an
error response. (With FastAPI's default scope the exit runs after the response is sent: the
client would see 200 for a transaction that failed.) The dependency cannot see the status the
endpoint answers: it commits unless the endpoint raises (``HTTPException`` included). For
commit-by-status, client disconnects and retries, use ``hookbus_asgi.TransactionMiddleware``
(``app.add_middleware(TransactionMiddleware, pool=...)``) instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import hookbus_asyncpg
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from hookbus import CommitOutcomeUnknownError, TransactionAbortedError, ValidationError

from ._errors import ErrorMapper, error_response
from ._types import Isolation, PoolSource, check_pool_source, resolve_pool, scope_options

__all__ = ["install_error_handlers", "transaction"]


def transaction(
    pool: PoolSource,
    *,
    isolation: Isolation | None = None,
    readonly: bool = False,
    deferrable: bool = False,
) -> Any:
    """A ``Depends`` giving the request a ``hookbus_asyncpg.transaction(pool)`` scope.

    Its exit commits (or rolls back if the endpoint raised) before the response is sent.
    ``pool`` is an ``asyncpg.Pool`` or a function returning it. Pair it with
    :func:`install_error_handlers` so that what COMMIT raises gets its status.
    """
    check_pool_source(pool)
    options = scope_options(isolation, readonly, deferrable)

    async def hookbus_transaction() -> AsyncIterator[hookbus_asyncpg.AsyncpgTransaction]:
        async with hookbus_asyncpg.transaction(resolve_pool(pool), **options) as tx:
            yield tx

    return Depends(hookbus_transaction, scope="function")


def install_error_handlers(app: FastAPI, errors: ErrorMapper = error_response) -> None:
    """Answer hookbus's errors as ``errors`` says (default ``hookbus_asgi.error_response``).

    ``ValidationError`` 422 with its JSON; a serialization failure, deadlock or constraint
    violation (asyncpg's ``PostgresError``) 409; ``CommitOutcomeUnknownError`` 503;
    ``TransactionAbortedError`` 500. An error ``errors`` does not map propagates (500).
    """
    import asyncpg

    async def handler(request: Request, exc: Exception) -> Response:
        answer = errors(exc)
        if answer is None:
            raise exc
        return Response(answer.body, answer.status, media_type="application/json")

    for kind in (
        ValidationError,
        CommitOutcomeUnknownError,
        TransactionAbortedError,
        asyncpg.PostgresError,
    ):
        app.add_exception_handler(kind, handler)
