"""The asyncpg backend: hookbus owns BEGIN and COMMIT on the connection to read COMMIT's answer."""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias, final

import anyio
import asyncpg
import asyncpg.pool

from hookbus import (
    CommitOutcome,
    CommitOutcomeUnknownError,
    Transaction,
    TransactionAbortedError,
)

__all__ = ["AsyncpgBackend", "AsyncpgTransaction", "transaction"]

logger: Final = logging.getLogger("hookbus")

Isolation = Literal["read_committed", "read_uncommitted", "repeatable_read", "serializable"]
# A connection, or the proxy a pool hands out.
# (asyncpg ships no type information: both are ``Any`` to mypy.)
Connection: TypeAlias = "asyncpg.Connection | asyncpg.pool.PoolConnectionProxy"

_ISOLATION: Final[dict[str, str]] = {
    "read_committed": " ISOLATION LEVEL READ COMMITTED",
    "read_uncommitted": " ISOLATION LEVEL READ UNCOMMITTED",
    "repeatable_read": " ISOLATION LEVEL REPEATABLE READ",
    "serializable": " ISOLATION LEVEL SERIALIZABLE",
}

# Statements of the connection-loss path, asked on another connection.
_XACT_STATUS: Final = "SELECT pg_xact_status($1::text::xid8)"
_XID_NOTICE: Final = "hookbus xid "
# client_min_messages is raised for the rest of the transaction only, in case the session
# filters notices out; pg_current_xact_id_if_assigned() assigns no id to a read-only one.
_COMMIT_ANNOUNCING_XID: Final = (
    "SET LOCAL client_min_messages = notice; "
    f"DO $$BEGIN RAISE NOTICE '{_XID_NOTICE}%', pg_current_xact_id_if_assigned(); END$$; "
    "COMMIT"
)
_POLL_INTERVAL: Final = 0.02


def _begin_statement(isolation: str | None, readonly: bool, deferrable: bool) -> str:
    if isolation is not None and isolation not in _ISOLATION:
        raise ValueError(f"isolation must be one of {sorted(_ISOLATION)}, not {isolation!r}")
    sql = "BEGIN" + (_ISOLATION[isolation] if isolation else "")
    if readonly:
        sql += " READ ONLY"
    if deferrable:
        sql += " DEFERRABLE"
    return sql


@final
class AsyncpgBackend:
    """The backend of a scope on one asyncpg connection.

    With COMMIT it sends the transaction's id (``pg_current_xact_id_if_assigned()``, which
    assigns none) in a NOTICE, in the same round trip, so that if the connection is lost
    during COMMIT the outcome can be asked of PostgreSQL (``pg_xact_status``) on a connection
    from ``recovery_pool``. A log listener of the application's own on this connection sees
    that notice go by.
    """

    __slots__ = ("_begin", "_find", "_recovery_pool", "_xid", "connection", "outcome_timeout")

    def __init__(
        self,
        connection: Connection,
        *,
        isolation: Isolation | None = None,
        readonly: bool = False,
        deferrable: bool = False,
        recovery_pool: asyncpg.Pool | None = None,
        outcome_timeout: float = 5.0,
        find_outcome: bool = True,
    ) -> None:
        self.connection = connection
        self._find = find_outcome
        self._begin = _begin_statement(isolation, readonly, deferrable)
        self._recovery_pool = recovery_pool
        self.outcome_timeout = outcome_timeout
        self._xid: str | None = None

    async def begin(self) -> None:
        """Send BEGIN with the scope's options."""
        await self.connection.execute(self._begin)

    async def commit(self) -> CommitOutcome:
        """Send COMMIT and read its answer; find the outcome out if the connection drops."""
        conn = self.connection
        if not self._find:
            return await self._commit(conn, "COMMIT")
        # The transaction's id travels in a NOTICE sent just before COMMIT, in the same round
        # trip: PostgreSQL flushes a notice at once, so the id has arrived if the connection
        # is lost during the COMMIT itself. (Asking for it first cost a round trip.)
        self._xid = None
        conn.add_log_listener(self._on_notice)
        try:
            return await self._commit(conn, _COMMIT_ANNOUNCING_XID)
        except asyncpg.InFailedSQLTransactionError:
            # A SQL error was swallowed inside the scope: the DO block was refused and COMMIT
            # never ran. COMMIT now ends the transaction, which PostgreSQL answers ROLLBACK.
            return await self._commit(conn, "COMMIT")
        finally:
            if _is_usable(conn):  # a lost connection may already be back in its pool
                conn.remove_log_listener(self._on_notice)

    async def _commit(self, conn: Connection, statement: str) -> CommitOutcome:
        try:
            status = await conn.execute(statement)
        except asyncpg.InFailedSQLTransactionError:
            raise
        except Exception as exc:
            if _is_usable(conn) and not _is_connection_loss(exc):
                raise  # the server refused COMMIT, and has rolled back
            return await self._find_outcome(self._xid, exc)
        return CommitOutcome.COMMITTED if status == "COMMIT" else CommitOutcome.ABORTED

    def _on_notice(self, connection: object, message: Any) -> None:
        text = str(getattr(message, "message", ""))
        if text.startswith(_XID_NOTICE):
            xid = text[len(_XID_NOTICE) :].strip()
            self._xid = None if xid in ("", "<NULL>") else xid  # NULL: no id, nothing written

    async def rollback(self) -> None:
        """Send ROLLBACK, unless the connection is gone (the server then rolled back)."""
        try:
            await self.connection.execute("ROLLBACK")
        except asyncpg.InterfaceError:
            # Closed, or a pooled proxy the pool took back when its connection dropped.
            if _is_usable(self.connection):
                raise

    async def savepoint(self, name: str) -> None:
        """Send SAVEPOINT."""
        await self.connection.execute(f"SAVEPOINT {name}")

    async def release(self, name: str) -> None:
        """Send RELEASE SAVEPOINT."""
        await self.connection.execute(f"RELEASE SAVEPOINT {name}")

    async def rollback_to(self, name: str) -> None:
        """Send ROLLBACK TO SAVEPOINT and RELEASE it, in one round trip."""
        await self.connection.execute(f"ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}")

    async def _find_outcome(self, xid: str | None, lost: Exception) -> CommitOutcome:
        if not self._find:
            raise CommitOutcomeUnknownError(
                "the connection was lost during COMMIT and the scope was opened with "
                "find_outcome=False; neither postcommit nor rollback ran"
            ) from lost
        if xid is None:
            raise CommitOutcomeUnknownError(
                "the connection was lost during COMMIT of a transaction that had no "
                "transaction id (it wrote nothing); its outcome is unknown"
            ) from lost
        if self._recovery_pool is None:
            raise CommitOutcomeUnknownError(
                f"the connection was lost during COMMIT of transaction {xid} and no pool was "
                "given to ask PostgreSQL its outcome; neither postcommit nor rollback ran"
            ) from lost
        deadline = time.monotonic() + self.outcome_timeout
        try:
            async with self._recovery_pool.acquire(timeout=self.outcome_timeout) as other:
                while True:
                    status = await other.fetchval(_XACT_STATUS, xid)
                    if status == "committed":
                        logger.warning(
                            "connection lost during COMMIT; transaction %s committed", xid
                        )
                        return CommitOutcome.COMMITTED
                    if status == "aborted":
                        raise TransactionAbortedError(
                            f"the connection was lost during COMMIT and PostgreSQL rolled "
                            f"transaction {xid} back; the rollback operations ran"
                        ) from lost
                    if status != "in progress" or time.monotonic() >= deadline:
                        break
                    # The server's backend may still be finishing the COMMIT; nothing can
                    # be awaited for it from here, so ask again shortly.
                    await anyio.sleep(_POLL_INTERVAL)
        except (TransactionAbortedError, CommitOutcomeUnknownError):
            raise
        except Exception as exc:
            raise CommitOutcomeUnknownError(
                f"the connection was lost during COMMIT of transaction {xid} and its outcome "
                f"could not be asked ({exc!r}); neither postcommit nor rollback ran"
            ) from lost
        raise CommitOutcomeUnknownError(
            f"the connection was lost during COMMIT of transaction {xid} and PostgreSQL "
            f"reports it {status!r}; neither postcommit nor rollback ran"
        ) from lost


def _is_usable(conn: Connection) -> bool:
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # a pooled proxy detached from its lost connection
        return False


def _is_connection_loss(exc: BaseException) -> bool:
    return isinstance(
        exc,
        asyncpg.PostgresConnectionError
        | asyncpg.AdminShutdownError
        | asyncpg.InterfaceError
        | OSError
        | ConnectionError,
    )


class AsyncpgTransaction(Transaction):
    """A hookbus transaction scope on an asyncpg connection, exposed as ``connection``."""

    __slots__ = ()

    @property
    def connection(self) -> Connection:
        """The connection the scope runs on: send the transaction's statements on it."""
        backend = self.backend
        assert isinstance(backend, AsyncpgBackend)
        return backend.connection


@final
class _Scope:
    """What ``transaction()`` returns: takes a connection, runs the scope, gives it back."""

    __slots__ = ("_options", "_pool", "_recovery_pool", "_source", "_tx")

    def __init__(
        self,
        source: asyncpg.Pool | Connection,
        recovery_pool: asyncpg.Pool | None,
        options: dict[str, Any],
    ) -> None:
        self._source = source
        self._options = options
        self._pool = source if isinstance(source, asyncpg.Pool) else None
        self._recovery_pool = recovery_pool or self._pool
        self._tx: AsyncpgTransaction | None = None

    async def __aenter__(self) -> AsyncpgTransaction:
        if self._tx is not None:
            raise RuntimeError("this transaction() context is entered once")
        pool = self._pool
        if pool is not None:
            conn: Connection = await pool.acquire()
        else:
            assert not isinstance(self._source, asyncpg.Pool)
            conn = self._source
        try:
            backend = AsyncpgBackend(conn, recovery_pool=self._recovery_pool, **self._options)
            tx = self._tx = AsyncpgTransaction(backend)
            await tx.__aenter__()
        except BaseException:
            if pool is not None:
                await pool.release(conn)
            raise
        return tx

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tx = self._tx
        assert tx is not None
        try:
            await tx.__aexit__(exc_type, exc, tb)
        finally:
            if self._pool is not None:
                # Pool.release is shielded: the connection goes back even when cancelled.
                await self._pool.release(tx.connection)


def transaction(
    pool_or_connection: asyncpg.Pool | Connection,
    *,
    isolation: Isolation | None = None,
    readonly: bool = False,
    deferrable: bool = False,
    recovery_pool: asyncpg.Pool | None = None,
    outcome_timeout: float = 5.0,
    find_outcome: bool = True,
) -> _Scope:
    """Open a hookbus transaction scope on a pooled connection (or the one given).

    ``async with transaction(pool) as tx:`` takes a connection from ``pool``, sends BEGIN
    (``isolation``, ``readonly`` and ``deferrable`` as asyncpg names them), and at the end of
    the block drives the hookbus lifecycle around the real COMMIT or ROLLBACK, then gives the
    connection back in every outcome. Send statements on ``tx.connection``; use
    ``tx.savepoint()`` for nested work (not ``connection.transaction()``).

    If the connection drops during COMMIT, the outcome is asked of PostgreSQL on a
    connection from the pool (or ``recovery_pool`` when a connection was given), for up to
    ``outcome_timeout`` seconds; where it cannot be found, ``CommitOutcomeUnknownError``.
    Finding it out needs the transaction's id, read just before COMMIT: one round trip.
    ``find_outcome=False`` saves it, and a lost COMMIT is then always an unknown outcome.
    """
    _begin_statement(isolation, readonly, deferrable)  # refuse bad options here, not at BEGIN
    options: dict[str, Any] = {
        "isolation": isolation,
        "readonly": readonly,
        "deferrable": deferrable,
        "outcome_timeout": outcome_timeout,
        "find_outcome": find_outcome,
    }
    return _Scope(pool_or_connection, recovery_pool, options)
