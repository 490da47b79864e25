"""``transaction()``: a hookbus scope on a pooled connection, or a savepoint of the open one.

A scope opened while another is open in the same task, on the same pool or connection, joins
it as a savepoint (as Django's ``atomic`` does in a thread) and never commits on its own; a
transaction of its own is asked for with ``independent=True``. A scope opened on the pool in
another task (even one started inside the scope) is a transaction of its own: two tasks cannot
share one connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Final, TypeAlias, final

import asyncpg
import asyncpg.pool

from hookbus import Savepoint, Transaction, TransactionState, TransactionStateError

from ._backend import AsyncpgBackend, Connection
from ._lazy import LazyConnection, gone
from ._options import DEFAULT, Isolation, TransactionOptions
from ._savepoint_backend import SavepointBackend

__all__ = ["AsyncpgTransaction", "transaction"]

logger: Final = logging.getLogger("hookbus")

_JOINABLE: Final = (TransactionState.ACTIVE, TransactionState.PRECOMMITTING)
_DRIVER_TRANSACTION_HINT: Final = (
    "hookbus: inside a hookbus scope, hookbus owns the transaction; for nested work use "
    "`async with tx.savepoint():`, or a nested `hookbus_asyncpg.transaction(pool)`, which "
    "joins the open scope as a savepoint"
)


class AsyncpgTransaction(Transaction):
    """A hookbus transaction scope on an asyncpg connection, exposed as ``connection``.

    The scope begins lazily: it takes its connection (and sends BEGIN) at its first
    statement. ``tx.connection`` is usable from the start: before the first statement it is
    a ``LazyConnection`` whose statement methods begin the scope; ``await tx.connect()``
    begins it and returns the connection itself.
    """

    __slots__ = ("_lazy", "_pg")

    def __init__(self, backend: AsyncpgBackend | SavepointBackend) -> None:
        super().__init__(backend)
        self._pg = backend
        self._lazy: LazyConnection | None = None

    @property
    def connection(self) -> Connection:
        """The connection the scope runs on: send the transaction's statements on it.

        Before the scope's first statement, a ``LazyConnection`` that takes it then.
        """
        conn = self._pg.connection
        if conn is not None:
            return conn
        lazy = self._lazy
        if lazy is None:
            lazy = self._lazy = LazyConnection(self)
        return lazy

    @property
    def backend_connection(self) -> Connection | None:
        """The connection the scope took, or None while it has not begun."""
        return self._pg.connection

    async def connect(self) -> Connection:
        """Begin the scope if it has not begun (a connection, then BEGIN); return the
        connection it runs on."""
        if not self._begun:
            await self.begin()
        conn = self._pg.connection
        if conn is None:
            raise gone(self, "await tx.connect()")
        return conn

    def note_transaction_id(self, xid: str) -> None:
        """Tell the scope its transaction's id, read from a write of its own
        (``INSERT ... RETURNING pg_current_xact_id()::text``).

        A scope that knows its id sends a plain COMMIT: the id is what finds the outcome of
        a COMMIT whose connection is lost, and otherwise travels with the COMMIT (a NOTICE in
        the same round trip). The store does this on its inserts.
        """
        self._pg.know_xid(xid)

    def send_with_commit(self, statements: str) -> None:
        """Send ``statements`` (complete SQL statements, each ending with ``;``, literals
        only: no parameters) in COMMIT's own message, just before COMMIT: no round trip of
        their own. ``Outbox.publish`` sends its rows so.

        They run after every precommit. If one fails, COMMIT does not run: the transaction
        rolls back (the rollback path: ``revertprecommit``, ``rollback``) and their error is
        raised at the end of the scope. The transaction's id still travels with COMMIT (a
        lost COMMIT's outcome is found), after them.

        Refused (``TransactionStateError``) unless the scope is open and has begun: a scope
        that never began sends no COMMIT (``await tx.begin()`` first, as
        ``Outbox.publish`` does).
        """
        if self._state not in _JOINABLE:
            raise self._refused("send statements with COMMIT")
        if not self._begun:
            raise TransactionStateError(
                "cannot send statements with COMMIT before the scope has begun: a scope that "
                "never began sends no COMMIT; `await tx.begin()` first"
            )
        self._pg.send_with_commit(statements)

    def _runs_on(self, source: object) -> bool:
        """Tell whether ``source`` is this scope's connection (or its lazy stand-in)."""
        return source is not None and (source is self._pg.connection or source is self._lazy)

    @property
    def options(self) -> TransactionOptions:
        """The options the scope's transaction was begun with."""
        return self._pg.options


@final
class _Open:
    """A scope open in this context: what a nested ``transaction()`` may join."""

    __slots__ = ("connection", "pool", "task", "tx")

    def __init__(
        self,
        pool: asyncpg.Pool | None,
        connection: Connection | None,
        tx: AsyncpgTransaction,
        task: asyncio.Task[object] | None,
    ) -> None:
        self.pool, self.connection, self.tx, self.task = pool, connection, tx, task


# The scopes open in this context, outermost first.
_open: ContextVar[tuple[_Open, ...]] = ContextVar("hookbus_asyncpg.scopes", default=())


# Test mode (the pytest plugin's ``hookbus_db``): given the source and options of a scope that
# would run a transaction of its own, the stand-in returns the scope to run instead (one on a
# savepoint of the test's transaction), or None to leave it alone. Unset outside test mode.
StandIn: TypeAlias = Callable[
    ["asyncpg.Pool | Connection", TransactionOptions],
    AbstractAsyncContextManager[AsyncpgTransaction] | None,
]
stand_in: ContextVar[StandIn | None] = ContextVar("hookbus_asyncpg.stand_in", default=None)


def _outer_scope(source: asyncpg.Pool | Connection) -> _Open | None:
    for entry in reversed(_open.get()):
        if source is entry.pool or source is entry.connection or entry.tx._runs_on(source):
            return entry
    return None


@final
class _Scope:
    """What ``transaction()`` returns: runs a scope of its own, or joins the open one."""

    __slots__ = ("_instead", "_options", "_pool", "_savepoint", "_source", "_token", "_tx")

    def __init__(self, source: asyncpg.Pool | Connection, options: TransactionOptions) -> None:
        self._source = source
        self._options = options
        self._pool = source if isinstance(source, asyncpg.Pool) else None
        self._tx: AsyncpgTransaction | None = None
        self._savepoint: Savepoint | None = None
        self._token: Token[tuple[_Open, ...]] | None = None
        self._instead: AbstractAsyncContextManager[AsyncpgTransaction] | None = None

    async def __aenter__(self) -> AsyncpgTransaction:
        if self._tx is not None:
            raise RuntimeError("this transaction() context is entered once")
        source = self._source
        outer = None if not _open.get() else _outer_scope(source)
        if outer is not None and outer.tx.state in _JOINABLE:
            if outer.task is asyncio.current_task() and not self._options.independent:
                return await self._join(outer)
            if source is not outer.pool:
                raise TransactionStateError(
                    "this connection runs an open scope (of this task or another): a "
                    "transaction of its own needs another connection; pass the pool"
                )
        pool = self._pool
        substitute = stand_in.get()
        if substitute is not None and (instead := substitute(source, self._options)) is not None:
            tx = self._tx = await instead.__aenter__()
            self._instead = instead
            task = asyncio.current_task()
            self._token = _open.set((*_open.get(), _Open(pool, tx.connection, tx, task)))
            return tx
        if isinstance(source, LazyConnection):
            raise TransactionStateError(
                "this is the connection of a scope that is over, or of another task's scope: "
                "a transaction of its own needs another connection; pass the pool"
            )
        if pool is not None:
            # The scope takes its connection at its first statement (a lazy begin).
            conn: Connection | None = None
        else:
            conn = source
            if conn.is_in_transaction():
                raise TransactionStateError(
                    "this connection is already inside a transaction that hookbus did not "
                    "open; hookbus must own BEGIN and COMMIT to read COMMIT's answer"
                )
        tx = self._tx = AsyncpgTransaction(AsyncpgBackend(conn, self._options, pool=pool))
        await tx.__aenter__()
        self._token = _open.set((*_open.get(), _Open(pool, conn, tx, asyncio.current_task())))
        return tx

    async def _join(self, outer: _Open) -> AsyncpgTransaction:
        conflict = self._options.conflicts_with(outer.tx.options)
        if conflict is not None:
            raise ValueError(
                f"a nested transaction() joins the open scope as a savepoint and cannot change "
                f"its options ({conflict}); pass independent=True for a transaction of its own"
            )
        self._tx = outer.tx
        savepoint = self._savepoint = outer.tx.savepoint()
        await savepoint.__aenter__()
        return outer.tx

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tx = self._tx
        assert tx is not None
        if isinstance(exc, asyncpg.InterfaceError):
            _point_to_savepoints(exc)
        if self._savepoint is not None:
            await self._savepoint.__aexit__(exc_type, exc, tb)
            return
        token = self._token
        assert token is not None
        if self._instead is not None:
            try:
                await self._instead.__aexit__(exc_type, exc, tb)
            finally:
                _open.reset(token)
            return
        try:
            # The scope gives the connection back itself, before postcommit runs.
            await tx.__aexit__(exc_type, exc, tb)
        finally:
            _open.reset(token)
            backend = tx.backend
            # Given back already, unless the scope could not (nothing to await then).
            if isinstance(backend, AsyncpgBackend) and backend.holds_pooled:
                await backend.close()


def _point_to_savepoints(exc: asyncpg.InterfaceError) -> None:
    """Add to asyncpg's refusal of ``connection.transaction()`` the way that works here."""
    seen = getattr(exc, "__notes__", ())
    if "Connection.transaction()" in str(exc) and _DRIVER_TRANSACTION_HINT not in seen:
        exc.add_note(_DRIVER_TRANSACTION_HINT)  # once, though nested scopes see it go by


_SOURCES: Final = (
    asyncpg.Pool,
    asyncpg.Connection,
    asyncpg.pool.PoolConnectionProxy,
    LazyConnection,
)
_CHECKED: dict[tuple[object, ...], TransactionOptions] = {
    (None, None, 5.0, False, False, True, False): DEFAULT
}  # (isolation, recovery_pool, outcome_timeout, readonly, deferrable, find_outcome, independent)
_CHECKED_BOUND: Final = 64


def transaction(
    pool_or_connection: asyncpg.Pool | Connection,
    *,
    isolation: Isolation | None = None,
    readonly: bool = False,
    deferrable: bool = False,
    recovery_pool: asyncpg.Pool | None = None,
    outcome_timeout: float = 5.0,
    find_outcome: bool = True,
    independent: bool = False,
) -> _Scope:
    """Open a hookbus transaction scope on a pooled connection (or the one given).

    ``async with transaction(pool) as tx:`` begins lazily: at the scope's first statement on
    ``tx.connection`` (or ``await tx.connect()``) it takes a
    connection from ``pool`` and sends BEGIN (``isolation``, ``readonly`` and ``deferrable``
    as asyncpg names them); a scope that sends no statement takes no connection and sends
    nothing. At the end of the block it drives the hookbus lifecycle around the real COMMIT
    or ROLLBACK, and gives the connection back as soon as the outcome is known, before
    postcommit runs (a failure to give it back is logged, never raised: the caller sees the
    scope's outcome). On a connection given, the scope begins when entered (statements sent
    on that connection directly are then inside it). Send statements on ``tx.connection``;
    use ``tx.savepoint()`` for nested work (not ``connection.transaction()``).

    Opened inside another scope of the same task on the same pool or connection (its
    ``tx.connection`` included), it joins that scope as a savepoint and yields it: it never
    commits on its own, and if its block raises, what it did is rolled back and the error
    propagates. ``independent=True`` opens a transaction of its own on another connection, as
    does a scope opened in another task (two tasks cannot share one connection).

    If the connection drops during COMMIT, the outcome is asked of PostgreSQL on a
    connection from the pool (or ``recovery_pool``), for up to ``outcome_timeout`` seconds;
    where it cannot be found, ``CommitOutcomeUnknownError``. ``find_outcome=False`` never asks
    (a lost COMMIT is then always an unknown outcome). Options are checked here, once.
    """
    if not isinstance(pool_or_connection, _SOURCES):
        raise TypeError(
            f"transaction() takes an asyncpg pool or connection, not {pool_or_connection!r}"
        )
    # Options are checked once per distinct set (building them costs ~10x the rest of this
    # call): a set seen before, of exact types, is taken from a small cache.
    key = (
        isolation,
        recovery_pool,
        outcome_timeout,
        readonly,
        deferrable,
        find_outcome,
        independent,
    )
    exact = (
        type(readonly) is bool
        and type(deferrable) is bool
        and type(find_outcome) is bool
        and type(independent) is bool
        and type(outcome_timeout) is float
        and (isolation is None or type(isolation) is str)
    )
    options = _CHECKED.get(key) if exact else None
    if options is None:
        options = TransactionOptions(
            isolation=isolation,
            readonly=readonly,
            deferrable=deferrable,
            recovery_pool=recovery_pool,
            outcome_timeout=outcome_timeout,
            find_outcome=find_outcome,
            independent=independent,
        )
        if exact:
            if len(_CHECKED) >= _CHECKED_BOUND:
                _CHECKED.clear()
            _CHECKED[key] = options
    return _Scope(pool_or_connection, options)
