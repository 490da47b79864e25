"""FastAPI: the request's transaction scope as a dependency, and the error answers as handlers.

>>> Tx = Annotated[  # doctest: +SKIP
...     AsyncpgTransaction, transaction(lambda: hookbus_asyncpg.transaction(app.state.pool))
... ]
>>> @app.post("/people")  # doctest: +SKIP
... async def add(tx: Tx) -> dict[str, int]: ...

The dependency is declared ``Depends(..., scope="function")``: FastAPI runs its exit (the
COMMIT) when the endpoint returns, before the response is sent, so a failed COMMIT becomes an
error response. (With FastAPI's default scope the exit runs after the response is sent: the
client would see 200 for a transaction that failed.) The dependency cannot see the status the
endpoint answers: it commits unless the endpoint raises (``HTTPException`` included). For
commit-by-status, client disconnects and retries, use ``hookbus_asgi.TransactionMiddleware``
(``app.add_middleware(TransactionMiddleware, transaction=...)``) instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from hookbus import CommitOutcomeUnknownError, Transaction, TransactionAbortedError, ValidationError

from ._asyncpg import Isolation
from ._errors import ErrorMapper, database_errors, error_response
from ._running import KEY, RunningScopes
from ._scopes import opened, scope_factory
from ._types import PoolSource, ScopeFactory

__all__ = ["install_error_handlers", "transaction"]


def transaction(
    transaction: ScopeFactory | PoolSource | None = None,
    *,
    pool: PoolSource | None = None,
    isolation: Isolation | None = None,
    readonly: bool = False,
    deferrable: bool = False,
) -> Any:
    """A ``Depends`` giving the request the scope ``transaction()`` opens.

    ``transaction`` is a function returning an async context manager that yields a
    ``hookbus.Transaction`` (``lambda: hookbus_asyncpg.transaction(app.state.pool)``, or
    ``hookbus_asgi.asyncpg_transactions(...)``). The dependency's exit commits (or rolls
    back if the endpoint raised) before the response is sent. Pair it with
    :func:`install_error_handlers` so that what COMMIT raises gets its status. A pool (or a
    function returning one, with ``isolation``...) is deprecated, as for the middleware.
    The lifespan's shutdown waits for the scope while it runs, as for the middleware's
    (``server_events`` whose state the lifespan yields).
    """
    open_scope = scope_factory(
        "transaction",
        transaction,
        pool=pool,
        isolation=isolation,
        readonly=readonly,
        deferrable=deferrable,
    )

    async def hookbus_transaction(request: Request) -> AsyncIterator[Transaction]:
        state = request.scope.get("state")
        running: RunningScopes | None = state.get(KEY) if state is not None else None
        if running is None:  # no lifespan of hookbus_asgi's: nothing waits for the scope
            async with open_scope() as tx:
                yield opened(tx, "transaction")
            return
        doing = f"{request.scope.get('method')} {request.scope.get('path')}"
        token = object()
        running.enter(token, f"{doing} (running)")
        try:
            async with open_scope() as tx:
                try:
                    yield opened(tx, "transaction")
                except BaseException:
                    running.enter(token, f"{doing} (rollback)")
                    raise
                running.enter(token, f"{doing} (COMMIT, postcommit)")
        finally:
            running.leave(token)

    return Depends(hookbus_transaction, scope="function")


def install_error_handlers(app: FastAPI, errors: ErrorMapper = error_response) -> None:
    """Answer hookbus's errors as ``errors`` says (default ``hookbus_asgi.error_response``).

    ``ValidationError`` 422 with its JSON; a serialization failure, deadlock or constraint
    violation (asyncpg's ``PostgresError``) 409; ``CommitOutcomeUnknownError`` 503;
    ``TransactionAbortedError`` 500. An error ``errors`` does not map propagates (500).
    Database errors are asyncpg's ``PostgresError`` when asyncpg is loaded.
    """

    async def handler(request: Request, exc: Exception) -> Response:
        answer = errors(exc)
        if answer is None:
            raise exc
        return Response(answer.body, answer.status, media_type="application/json")

    for kind in (
        ValidationError,
        CommitOutcomeUnknownError,
        TransactionAbortedError,
        *database_errors(),
    ):
        app.add_exception_handler(kind, handler)
