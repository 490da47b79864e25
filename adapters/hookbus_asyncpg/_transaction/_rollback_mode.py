"""Test mode: a test's database transaction, rolled back at its end, in which scopes still commit.

``rolled_back(pool)`` takes a connection from ``pool`` and sends BEGIN; while it is open, a
scope that would run a transaction of its own on ``pool`` or on that connection runs instead
on a savepoint of the test's transaction (``SavepointBackend``): its whole lifecycle runs,
postcommit included, and the test's transaction is rolled back at the end, so nothing the
test wrote stays (Rails' transactional tests, since Rails 5). This is the one place where
postcommit runs for data that is never committed. A postcommit that raises is logged as in
production, and recorded in ``postcommit_errors`` so that the pytest plugin fails the test.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import final

import asyncpg

from hookbus.testing import postcommit_errors

from ._backend import Connection
from ._options import TransactionOptions
from ._savepoint_backend import SavepointBackend
from ._transaction import AsyncpgTransaction, stand_in

__all__ = ["RolledBackDatabase", "rolled_back"]


@final
class RolledBackDatabase:
    """The database of one test: ``connection`` is in a transaction rolled back after the test.

    Scopes opened on ``pool`` or on ``connection`` (``hookbus_asyncpg.transaction(...)``) run
    on savepoints of that transaction, their postcommit included. Read and write outside a
    scope through ``connection``: another connection of ``pool`` does not see what the test
    wrote. ``postcommit_errors`` holds what postcommit operations raised in the test.
    """

    __slots__ = ("_numbers", "_open_scopes", "connection", "pool", "postcommit_errors")

    def __init__(self, pool: asyncpg.Pool, connection: Connection) -> None:
        self.pool = pool
        self.connection = connection
        #: What postcommit operations raised in this test, in order.
        self.postcommit_errors: list[BaseException] = []
        self._numbers = itertools.count(1)
        self._open_scopes: list[str] = []

    def take_postcommit_errors(self) -> list[BaseException]:
        """Return the postcommit errors recorded so far and forget them.

        A test that expects a postcommit to fail takes its error, so that it does not fail
        the test.
        """
        errors, self.postcommit_errors = self.postcommit_errors, []
        return errors

    def _stand_in(
        self, source: asyncpg.Pool | Connection, options: TransactionOptions
    ) -> _SavepointScope | None:
        if source is not self.pool and source is not self.connection:
            return None
        name = f"hookbus_test_{next(self._numbers)}"
        backend = SavepointBackend(self.connection, name, options, self._open_scopes)
        return _SavepointScope(self, backend)


@final
class _SavepointScope:
    """A scope on a savepoint of the test's transaction; its postcommit errors are recorded."""

    __slots__ = ("_database", "_tx")

    def __init__(self, database: RolledBackDatabase, backend: SavepointBackend) -> None:
        self._database = database
        self._tx = AsyncpgTransaction(backend)

    async def __aenter__(self) -> AsyncpgTransaction:
        await self._tx.__aenter__()
        return self._tx

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with postcommit_errors(self._tx) as errors:
            await self._tx.__aexit__(exc_type, exc, tb)
        self._database.postcommit_errors.extend(errors)


@asynccontextmanager
async def rolled_back(pool: asyncpg.Pool) -> AsyncIterator[RolledBackDatabase]:
    """Run the block in test mode on a connection of ``pool`` (see the module docstring).

    The block's transaction is rolled back at its end, whatever happened in it, and the
    connection given back to ``pool``.
    """
    if not isinstance(pool, asyncpg.Pool):
        raise TypeError(f"rolled_back() takes an asyncpg pool, not {pool!r}")
    connection = await pool.acquire()
    try:
        await connection.execute("BEGIN")
        database = RolledBackDatabase(pool, connection)
        token = stand_in.set(database._stand_in)
        try:
            yield database
        finally:
            stand_in.reset(token)
            if not connection.is_closed():
                await connection.execute("ROLLBACK")
    finally:
        await pool.release(connection)
