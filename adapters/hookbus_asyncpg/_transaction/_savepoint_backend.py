"""The backend of a scope in test mode: its transaction is a savepoint of the test's transaction.

BEGIN is a SAVEPOINT, COMMIT a RELEASE, ROLLBACK a ROLLBACK TO: the scope runs its whole
lifecycle (precommit, "COMMIT", postcommit, or the rollback path) while nothing reaches the
database for good, the test's transaction being rolled back at the end of the test. Only the
pytest plugin's ``hookbus_db`` fixture uses it.
"""

from __future__ import annotations

from typing import Final, final

import asyncpg

from hookbus import CommitOutcome, TransactionStateError

from ._backend import AsyncpgBackend, Connection
from ._options import TransactionOptions

__all__ = ["SavepointBackend"]

# Deferred constraints are checked at COMMIT, never at RELEASE: check them as COMMIT would,
# inside a savepoint rolled back at once, which restores their deferred mode.
_CHECK: Final = (
    "SAVEPOINT hookbus_test_check; SET CONSTRAINTS ALL IMMEDIATE; "
    "ROLLBACK TO SAVEPOINT hookbus_test_check; RELEASE SAVEPOINT hookbus_test_check; "
)


@final
class SavepointBackend:
    """A scope's backend whose transaction is the savepoint ``name`` on ``connection``.

    ``commit`` checks the deferred constraints (as COMMIT would), then releases the savepoint;
    if a statement failed inside the scope and its error was swallowed, it rolls the savepoint
    back and answers ``ABORTED``, as PostgreSQL answers such a COMMIT with ROLLBACK. The
    scope's ``options`` are kept for ``tx.options`` but not applied (a savepoint cannot change
    the isolation level or the read-only mode of the test's transaction).

    ``open_scopes`` is shared by the scopes on ``connection``: the names of their savepoints,
    innermost last. A scope ends innermost first; one that would end another's savepoint
    with its own (two tasks whose scopes overlap on the one connection) is refused with a
    ``TransactionStateError`` saying so.
    """

    __slots__ = ("_name", "_open", "_statements", "connection", "options", "with_commit")

    def __init__(
        self,
        connection: Connection,
        name: str,
        options: TransactionOptions,
        open_scopes: list[str],
    ) -> None:
        self.connection = connection
        self.options = options
        self._name = name
        self._open = open_scopes
        # SAVEPOINT, RELEASE and ROLLBACK TO, and the check of their names, said once.
        self._statements = AsyncpgBackend(connection)
        #: Statements sent in the RELEASE's message, before it (``send_with_commit``).
        self.with_commit = ""

    def send_with_commit(self, statements: str) -> None:
        """Send ``statements`` in the message that stands for COMMIT, before it; if one of
        them fails, the savepoint is rolled back and their error is what ``commit`` raises."""
        self.with_commit += statements

    def know_xid(self, xid: str) -> None:
        """A write's transaction id: of no use here (the test's transaction never commits)."""

    async def begin(self) -> None:
        """Set the savepoint that stands for the scope's transaction."""
        await self._statements.savepoint(self._name)
        self._open.append(self._name)

    def _end(self) -> None:
        open_scopes = self._open
        if open_scopes[-1] != self._name:
            raise TransactionStateError(
                f"a scope on the test's connection ended while a scope begun after it, in "
                f"another task, is still open ({open_scopes[-1]} inside {self._name}): under "
                "hookbus_db all scopes share one connection, so scopes of concurrent tasks "
                "must not overlap; test concurrency with real commits on a pool of your own"
            )
        open_scopes.pop()

    async def commit(self) -> CommitOutcome:
        """Check the deferred constraints and release the savepoint."""
        self._end()
        try:
            await self.connection.execute(
                f'{self.with_commit}{_CHECK}RELEASE SAVEPOINT "{self._name}"'
            )
        except asyncpg.InFailedSQLTransactionError:
            await self._statements.rollback_to(self._name)
            return CommitOutcome.ABORTED
        except asyncpg.PostgresError:
            await self._statements.rollback_to(self._name)  # as the server does
            raise
        return CommitOutcome.COMMITTED

    async def rollback(self) -> None:
        """Roll back to the savepoint and release it."""
        self._end()
        await self._statements.rollback_to(self._name)

    async def savepoint(self, name: str) -> None:
        """Set a savepoint of the scope."""
        await self._statements.savepoint(name)

    async def release(self, name: str) -> None:
        """Release a savepoint of the scope."""
        await self._statements.release(name)

    async def rollback_to(self, name: str) -> None:
        """Roll back to a savepoint of the scope and release it."""
        await self._statements.rollback_to(name)
