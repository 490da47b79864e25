"""The asyncpg backend: hookbus owns BEGIN and COMMIT on the connection to read COMMIT's answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Coroutine
from typing import Any, Final, TypeAlias, final

import asyncpg
import asyncpg.pool

from hookbus import CommitOutcome, TransactionAbortedError, TransactionStateError

from ._options import DEFAULT, TransactionOptions
from ._outcome import ASK_XID, NOT_RECEIVED, Xid, XidNotice, find_outcome, is_connection_loss

__all__ = ["AsyncpgBackend", "Connection", "give_back"]

logger: Final = logging.getLogger("hookbus")

# A connection, or the proxy a pool hands out.
# (asyncpg ships no type information: both are ``Any`` to mypy.)
Connection: TypeAlias = "asyncpg.Connection | asyncpg.pool.PoolConnectionProxy"

# A savepoint name reaches SQL only if it is a plain identifier PostgreSQL keeps whole.
_PLAIN_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

# Server processes whose role may not run a DO block (plpgsql not granted): their COMMIT asks
# the transaction's id with a round trip instead of trying the DO block again. A hint only:
# a pid reused by another session costs that session one round trip, never a commit.
_NO_DO_BLOCK: set[int] = set()
_NO_DO_BLOCK_BOUND: Final = 4096

#: Seconds ROLLBACK waits for a statement the scope's cancellation interrupted to stop, before
#: the connection is closed instead (the server then rolls back when the statement ends).
ROLLBACK_WAIT: Final = 5.0


@final
class AsyncpgBackend:
    """The backend of a scope on one asyncpg connection.

    With COMMIT it sends the transaction's id (``pg_current_xact_id_if_assigned()``, which
    assigns none) in a NOTICE, in the same round trip, so that if the connection is lost
    during COMMIT the outcome can be asked of PostgreSQL (``pg_xact_status``) on a connection
    of ``options.recovery_pool``, else of ``pool`` (the pool ``connection`` came from). A log
    listener of the application's own on this connection sees that notice go by. Where the
    role may not run a DO block (plpgsql not granted), the id is asked with a round trip.
    """

    __slots__ = ("_home", "_options", "_pool", "connection", "lazy", "with_commit", "xid")

    def __init__(
        self,
        connection: Connection | None,
        options: TransactionOptions = DEFAULT,
        *,
        pool: asyncpg.Pool | None = None,
    ) -> None:
        if not isinstance(options, TransactionOptions):
            raise TypeError(f"options must be a TransactionOptions, not {options!r}")
        if connection is None and pool is None:
            raise TypeError("an AsyncpgBackend needs a connection or a pool to take one from")
        #: The connection: the one given, else the one ``begin`` takes from ``pool``.
        self.connection: Any = connection
        self._options = options
        self._pool = options.recovery_pool or pool
        # The pool the connection is taken from at BEGIN and goes back to once the outcome
        # is known (``close``); None for a connection given.
        self._home = pool if connection is None else None
        #: A scope on a pool begins at its first statement, which goes through
        #: ``tx.connection`` (the pool's connection is reachable no other way); one on a
        #: connection given begins when entered (its user may send on it directly).
        self.lazy = connection is None
        #: The transaction's id, once a write told it (``know_xid``): COMMIT then carries none.
        self.xid: str | None = None
        #: Statements sent in COMMIT's own message, before it (``send_with_commit``).
        self.with_commit = ""

    @property
    def options(self) -> TransactionOptions:
        """The options the transaction was begun with."""
        return self._options

    async def begin(self) -> None:
        """Take a connection from the pool (unless one was given), then send BEGIN with the
        scope's options.

        If BEGIN fails or is cancelled, the connection is left outside any transaction (a
        cancellation can arrive after the server has run BEGIN), and one taken from the pool
        goes back to it: the backend is as it was, and a later ``begin`` starts afresh.
        """
        conn = self.connection
        home = self._home
        if conn is None:
            assert home is not None
            conn = self.connection = await home.acquire()
        try:
            await conn.execute(self._options.begin)
        except BaseException as exc:
            try:
                await _to_the_end(_end_any_transaction(conn), exc)
            finally:
                if home is not None:
                    self.connection = None
                    await give_back(home, conn)  # Pool.release is shielded
            raise

    def know_xid(self, xid: str) -> None:
        """Take the transaction's id (``pg_current_xact_id()::text``) from a write that
        returned it: the COMMIT then sends nothing to carry it (a plain COMMIT)."""
        self.xid = xid

    def send_with_commit(self, statements: str) -> None:
        """Send ``statements`` (SQL ending with ``;``, literals only) in COMMIT's own message,
        before COMMIT (and before the notice that carries the transaction's id).

        If one of them fails, COMMIT does not run: the transaction is rolled back (ROLLBACK
        is sent) and their error is what ``commit`` raises.
        """
        self.with_commit += statements

    async def commit(self) -> CommitOutcome:
        """Send COMMIT and read its answer; find the outcome out if the connection drops.

        The transaction's id, needed to ask the outcome of a COMMIT whose connection was
        lost, comes from the scope's first write where the store wrote it (``know_xid``);
        otherwise it is carried by a NOTICE sent in the COMMIT's own round trip, after the
        statements sent with COMMIT (``send_with_commit``), which may be what writes first.
        """
        conn = self.connection
        if not _is_usable(conn):
            # Lost before COMMIT was sent (the loss was seen meanwhile): the server rolls back.
            raise asyncpg.InterfaceError("the connection was lost before COMMIT was sent")
        try:
            return await self._send_commit(conn)
        except asyncpg.InterfaceError as exc:
            if not _is_usable(conn):
                raise  # lost before anything was sent: the server rolls back
            raise _busy(conn, exc) from exc

    async def _send_commit(self, conn: Connection) -> CommitOutcome:
        first = self.with_commit
        if not self._options.find_outcome:
            return await self._commit(conn, f"{first}COMMIT", NOT_RECEIVED)
        if self.xid is not None:
            return await self._commit(conn, f"{first}COMMIT", self.xid)
        if _NO_DO_BLOCK and conn.get_server_pid() in _NO_DO_BLOCK:
            return await self._commit_asking_xid(conn, first)
        notice = XidNotice()
        conn.add_log_listener(notice)
        try:
            status = await conn.execute(first + notice.statement)
        except asyncpg.InFailedSQLTransactionError:
            # A SQL error was swallowed inside the scope: the first statement was refused and
            # COMMIT never ran. COMMIT now ends the transaction, answered ROLLBACK.
            return await self._commit(conn, "COMMIT", NOT_RECEIVED)
        except (asyncpg.InsufficientPrivilegeError, asyncpg.UndefinedObjectError) as exc:
            if not (_is_usable(conn) and conn.is_in_transaction()):
                raise  # COMMIT itself failed (a deferred trigger's error): rolled back
            # The DO block was refused (plpgsql not granted): the savepoint kept the
            # transaction; undo the refused part, and ask the id with a round trip. (Unless
            # a statement sent with COMMIT was refused, before the savepoint was set.)
            try:
                await conn.execute(
                    "ROLLBACK TO SAVEPOINT hookbus_xid; RELEASE SAVEPOINT hookbus_xid"
                )
            except asyncpg.InvalidSavepointSpecificationError:
                await self._refused_before_commit(conn)
                raise exc from None
            _remember_no_do_block(conn.get_server_pid())
            return await self._commit_asking_xid(conn, "")  # the statements before it ran
        except Exception as exc:
            if _not_lost_in_commit(conn, exc):
                await self._refused_before_commit(conn)
                raise  # refused (by the server, which has rolled back), or never sent
            if notice.xid is NOT_RECEIVED and _ended_by_the_server(exc):
                # The server itself said it ended the session (pg_terminate_backend, a
                # shutdown) before it sent the notice, which comes before COMMIT: COMMIT never
                # ran. (A loss seen by the client alone says nothing of what the server did.)
                raise TransactionAbortedError(
                    f"the server ended the session before COMMIT ran ({exc}); nothing was "
                    "committed and the rollback operations ran"
                ) from exc
            return await find_outcome(notice.xid, exc, self._options, self._pool)
        finally:
            # A lost connection may already be back in its pool (its proxy then refuses).
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.remove_log_listener(notice)
        return CommitOutcome.COMMITTED if status == "COMMIT" else CommitOutcome.ABORTED

    async def _commit_asking_xid(self, conn: Connection, first: str) -> CommitOutcome:
        """Ask the id with a round trip, then COMMIT; ``first``, the statements sent with
        COMMIT that have not run yet, are sent before it (they may be what writes first)."""
        try:
            if first:
                await conn.execute(first)
            xid: str | None = await conn.fetchval(ASK_XID)
        except asyncpg.InFailedSQLTransactionError:
            return await self._commit(conn, "COMMIT", NOT_RECEIVED)  # answered ROLLBACK
        except Exception as exc:
            if _not_lost_in_commit(conn, exc):
                await self._refused_before_commit(conn)
            raise
        # (A connection lost here is lost before COMMIT: the error says the server rolled back.)
        return await self._commit(conn, "COMMIT", xid)

    async def _commit(self, conn: Connection, statement: str, xid: Xid) -> CommitOutcome:
        try:
            status = await conn.execute(statement)
        except Exception as exc:
            if _not_lost_in_commit(conn, exc):
                if isinstance(exc, asyncpg.InFailedSQLTransactionError) and statement != "COMMIT":
                    # A statement sent with COMMIT was refused: an error was swallowed inside
                    # the scope. COMMIT now ends the transaction, answered ROLLBACK.
                    return await self._commit(conn, "COMMIT", NOT_RECEIVED)
                await self._refused_before_commit(conn)
                raise  # refused (by the server, which has rolled back), or never sent
            return await find_outcome(xid, exc, self._options, self._pool)
        return CommitOutcome.COMMITTED if status == "COMMIT" else CommitOutcome.ABORTED

    async def _refused_before_commit(self, conn: Connection) -> None:
        """After an error raised before COMMIT ran (a statement sent with it was refused, so
        the rest of the message was skipped): ROLLBACK the transaction left open. A refused
        COMMIT has ended it already; the error raised is the refusal either way."""
        if self.with_commit and _is_usable(conn) and conn.is_in_transaction():
            try:
                await conn.execute("ROLLBACK")
            except Exception:
                logger.warning("ROLLBACK failed; the server ends the transaction", exc_info=True)

    @property
    def holds_pooled(self) -> bool:
        """Whether the backend holds a connection it took from its pool (``close`` gives it
        back)."""
        return self._home is not None and self.connection is not None

    async def close(self) -> None:
        """Give the connection back to the pool it came from (once; a no-op without a pool).

        The scope calls it once the outcome is known, before postcommit runs; ``connection``
        is then None (the pool's connection is no longer the scope's). A failure is logged,
        never raised (the pool replaces a connection it could not reset).
        """
        pool, self._home = self._home, None
        conn = self.connection
        if pool is not None and conn is not None:
            self.connection = None
            await give_back(pool, conn)

    async def rollback(self) -> None:
        """Send ROLLBACK, unless the connection is gone (the server then rolled back).

        A statement the block's cancellation interrupted must stop first: asyncpg waits for
        the server to acknowledge the cancel. PostgreSQL drops a cancel request that reaches
        it before the statement does, and the statement then runs to its end; so the wait is
        bounded (``ROLLBACK_WAIT``): past it the connection is closed (asyncpg closes it),
        and PostgreSQL rolls the transaction back when the statement ends.
        """
        conn = self.connection
        try:
            await conn.execute("ROLLBACK", timeout=ROLLBACK_WAIT)
        except asyncpg.InterfaceError:
            # Closed, or a pooled proxy the pool took back when its connection dropped.
            if _is_usable(conn):
                raise
        except TimeoutError:
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()  # asyncpg closed it already, unless ROLLBACK itself was slow
            logger.warning(
                "a statement interrupted by the scope's end did not stop within %s s of its "
                "cancel (PostgreSQL drops a cancel that arrives before the statement); hookbus "
                "closed the connection: the server rolls the transaction back when the "
                "statement ends",
                ROLLBACK_WAIT,
            )

    async def savepoint(self, name: str) -> None:
        """Send SAVEPOINT; ``name`` must be a plain identifier (``ValueError`` otherwise)."""
        await self.connection.execute(f"SAVEPOINT {_quoted(name)}")

    async def release(self, name: str) -> None:
        """Send RELEASE SAVEPOINT."""
        await self.connection.execute(f"RELEASE SAVEPOINT {_quoted(name)}")

    async def rollback_to(self, name: str) -> None:
        """Send ROLLBACK TO SAVEPOINT and RELEASE it, in one round trip."""
        quoted = _quoted(name)
        await self.connection.execute(f"ROLLBACK TO SAVEPOINT {quoted}; RELEASE SAVEPOINT {quoted}")


async def give_back(pool: asyncpg.Pool, conn: Connection) -> None:
    """Return ``conn`` to ``pool``; a failure is logged, never raised: the caller sees the
    scope's outcome (the pool replaces a connection it could not reset)."""
    try:
        # Pool.release is shielded: the connection goes back even when cancelled.
        await pool.release(conn)
    except Exception:
        logger.warning(
            "the connection could not be reset and returned to its pool (the pool replaces "
            "it); the scope's outcome stands",
            exc_info=True,
        )


def _quoted(name: str) -> str:
    if not isinstance(name, str) or _PLAIN_NAME.fullmatch(name) is None:
        raise ValueError(
            f"a savepoint name is a plain identifier (letters, digits, underscores, at most "
            f"63, not starting with a digit), not {name!r}"
        )
    return f'"{name}"'


def _remember_no_do_block(pid: int) -> None:
    if len(_NO_DO_BLOCK) >= _NO_DO_BLOCK_BOUND:
        _NO_DO_BLOCK.clear()
    _NO_DO_BLOCK.add(pid)
    logger.info(
        "PostgreSQL refused the DO block that sends the transaction's id with COMMIT "
        "(plpgsql not granted?); this session's scopes ask the id with a round trip instead"
    )


async def _end_any_transaction(conn: Connection) -> None:
    """ROLLBACK whatever a failed or cancelled BEGIN left open (a no-op if nothing is)."""
    try:
        await conn.execute("ROLLBACK")
    except Exception:
        # The connection is gone (the server ends the transaction) or unusable anyway.
        logger.debug("ROLLBACK after a failed BEGIN failed", exc_info=True)


async def _to_the_end(work: Coroutine[Any, Any, None], cause: BaseException) -> None:
    """Run ``work`` in a task of its own to its end, even if the caller is cancelled meanwhile.

    ``task.cancel()`` goes through an anyio shield: only a task of its own keeps a
    cancellation off the work. A cancellation that arrives meanwhile is raised once the work is
    done, unless ``cause``, about to be raised, is one already.
    """
    task = asyncio.get_running_loop().create_task(work)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None and not isinstance(cause, asyncio.CancelledError):
        raise cancelled from cause


def _is_usable(conn: Connection) -> bool:
    """Tell whether ``conn`` can still run a statement (not closed, not taken back)."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # a pooled proxy detached from its lost connection
        return False


def _not_lost_in_commit(conn: Connection, exc: BaseException) -> bool:
    """Tell a COMMIT refused or never sent from one whose connection was lost on the way."""
    # asyncpg refuses to send on a connection whose session the server has just ended
    # ("cannot switch to state"), or on one still running another statement ("another
    # operation is in progress", an InterfaceError while the connection is usable): nothing
    # was sent.
    if isinstance(exc, asyncpg.InternalClientError):
        return True
    if not _is_usable(conn):
        return False
    return isinstance(exc, asyncpg.InterfaceError) or not is_connection_loss(exc)


def _busy(conn: Connection, exc: asyncpg.InterfaceError) -> TransactionStateError:
    """COMMIT could not be sent: another statement still runs on the scope's connection (a
    task the block started outlived it). That statement belongs to the transaction, which
    must not commit half of it: the connection is closed, so PostgreSQL rolls back."""
    conn.terminate()
    return TransactionStateError(
        f"COMMIT was not sent: {exc} on the scope's connection (a task the block started "
        "still runs a statement of this transaction? await it inside the block); the "
        "connection was closed, so PostgreSQL rolled the transaction back, and the rollback "
        "operations ran"
    )


def _ended_by_the_server(exc: BaseException) -> bool:
    # asyncpg raises the server's FATAL 57P01 itself, or as the cause of the
    # ConnectionDoesNotExistError it raises when the connection closes right after it.
    return isinstance(exc, asyncpg.AdminShutdownError) or isinstance(
        exc.__cause__, asyncpg.AdminShutdownError
    )
