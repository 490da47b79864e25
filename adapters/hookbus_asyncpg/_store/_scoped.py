"""One transaction scope's view of a store: what every action of the store is handed.

A :class:`ScopedStore` is made the first time a store acts in a scope and kept in the scope's
``data``: the scope, its connection, the data that connection works on (``Database``), the
store's :class:`Catalog` and its bus's ``emit``. It runs the statements, each between its
``before_query`` and ``after_query`` events (the one statement runner: ``run`` for one,
``announce`` then ``run_announced`` for a write of several), and answers what every action
asks first: the type of an eid, whether two eids fit a relation.

A ``before_query`` hook that stops a statement (``Break``) raises :class:`Stopped` out of the
runner: the action it belongs to does not happen, and the one place that runs the action
(:func:`stoppable`, and ``act`` for its write) turns that into its "cancelled" answer.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, ParamSpec, TypeVar, final

from hookbus import (
    Operation,
    QueryEvent,
    Transaction,
    TransactionStateError,
    ValidationError,
)

from ._catalog import Catalog
from ._database import Database, Databases
from ._schema import EID_SEQUENCE, EntityType, RelationType, SchemaMismatchError
from ._statements import LOOKUP_ETYPES
from ._values import check_eid

__all__ = ["Copy", "ScopedStore", "Statement", "Stopped", "stoppable"]

Emit = Callable[[str, Any], Awaitable[Any]]
_P = ParamSpec("_P")
_R = TypeVar("_R")
_C = TypeVar("_C")


class Stopped(Exception):
    """A ``before_query`` hook stopped a statement: the action it belongs to does not happen."""


def stoppable(
    cancelled: _C,
) -> Callable[[Callable[_P, Awaitable[_R]]], Callable[_P, Awaitable[_R | _C]]]:
    """Run an action; if a ``before_query`` hook stopped one of its statements, return
    ``cancelled`` (the action's answer for "did not happen") instead."""

    def decorate(action: Callable[_P, Awaitable[_R]]) -> Callable[_P, Awaitable[_R | _C]]:
        @functools.wraps(action)
        async def run(*args: _P.args, **kwargs: _P.kwargs) -> _R | _C:
            try:
                return await action(*args, **kwargs)
            except Stopped:
                return cancelled

        return run

    return decorate


@final
class Copy:
    """A COPY of ``records`` into ``table``: the query events show it as ``sql``."""

    __slots__ = ("args", "columns", "sql", "table")

    def __init__(
        self, sql: str, table: str, records: list[tuple[Any, ...]], columns: Sequence[str]
    ) -> None:
        self.sql = sql
        self.table = table
        self.args = (records,)
        self.columns = list(columns)


#: A statement for :meth:`ScopedStore.announce`: ``(sql, args)`` or a :class:`Copy`.
Statement = tuple[str, tuple[Any, ...]] | Copy


@final
class ScopedStore:
    """A store's state in one transaction scope, handed to each of its actions."""

    __slots__ = (
        "catalog",
        "check_factory",
        "conn",
        "databases",
        "db",
        "deleted_here",
        "emit",
        "hooks_for",
        "key",
        "tx",
        "xid",
    )

    def __init__(
        self,
        tx: Transaction,
        conn: Any,
        databases: Databases,
        db: Database,
        catalog: Catalog,
        emit: Emit,
        key: Hashable,
    ) -> None:
        self.tx = tx
        self.conn = conn
        #: The store's registry of databases, and the data this scope's connection works on.
        self.databases = databases
        self.db = db
        self.catalog = catalog
        self.emit = emit
        #: The bus's ``hooks_for``: whether any hook may run for an event and key.
        self.hooks_for: Callable[[str, Hashable], tuple[Any, ...]] = lambda event, key: (None,)
        #: The store's key in ``tx.data`` (and the root of its accumulation keys).
        self.key = key
        self.check_factory: Callable[[], Operation] | None = None
        #: Eids whose row a delete of this scope removed (so a cancelled delete of the
        #: same eid further up the stack leaves it marked deleted).
        self.deleted_here: set[int] = set()
        #: The transaction's id, once a write of the store returned it.
        self.xid: str | None = None

    # -- the statement runner ----------------------------------------------------------------

    async def run(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        """Run one statement between its query events; ``Stopped`` if a before_query hook
        broke."""
        emit, tx = self.emit, self.tx
        if await emit("before_query", QueryEvent("before_query", sql, args, None, tx)) is not None:
            raise Stopped
        rows: list[Any] = await self.conn.fetch(sql, *args)
        await emit("after_query", QueryEvent("after_query", sql, args, len(rows), tx))
        return rows

    async def announce(self, statements: Sequence[Statement]) -> None:
        """``before_query`` for each of ``statements``; ``Stopped`` if a hook broke.

        A write of several statements announces them all before running any (then runs
        each with :meth:`run_announced`), so that a ``Break`` never leaves it half-done.
        """
        emit, tx = self.emit, self.tx
        for statement in statements:
            sql, args = _shown(statement)
            query = QueryEvent("before_query", sql, args, None, tx)
            if await emit("before_query", query) is not None:
                raise Stopped

    async def run_announced(self, statement: Statement) -> Any:
        """Run a statement :meth:`announce` announced, then send its ``after_query``.

        Returns its rows; for a :class:`Copy`, the number of rows copied.
        """
        if isinstance(statement, Copy):
            status = await self.conn.copy_records_to_table(
                statement.table, records=statement.args[0], columns=statement.columns
            )
            count = int(status.rsplit(" ", 1)[-1])  # "COPY 10000"
            result: Any = count
        else:
            result = await self.conn.fetch(statement[0], *statement[1])
            count = len(result)
        sql, args = _shown(statement)
        await self.emit("after_query", QueryEvent("after_query", sql, args, count, self.tx))
        return result

    # -- what every action asks first --------------------------------------------------------

    async def kind_of(self, eid: Any) -> EntityType:
        """The type of ``eid``; ``LookupError`` if no such entity."""
        problem = check_eid(eid)
        if problem is not None:
            raise TypeError(f"an eid is {problem}, not {eid!r}")
        kind = self.db.kinds.get(eid)
        if kind is not None:
            return kind
        rows = await self.run(LOOKUP_ETYPES, ([eid],))
        if not rows:
            raise LookupError(f"no entity has the eid {eid}")
        kind = self.catalog.schema.entity(rows[0][1])
        self.db.know(eid, kind)
        return kind

    async def fit(self, relation: RelationType, eidfrom: Any, eidto: Any) -> None:
        """Check that both eids exist with the types ``relation`` wants."""
        for eid in (eidfrom, eidto):
            problem = check_eid(eid)
            if problem is not None:
                raise TypeError(f"{relation.name}: an eid is {problem}, not {eid!r}")
        kinds = self.db.kinds
        unknown = [eid for eid in {eidfrom, eidto} if eid not in kinds]
        if unknown:
            rows = await self.run(LOOKUP_ETYPES, (unknown,))
            for eid, etype in rows:
                self.db.know(eid, self.catalog.schema.entity(etype))
            for eid in unknown:
                if eid not in kinds:
                    raise LookupError(f"{relation.name}: no entity has the eid {eid}")
        subject, object = kinds[eidfrom].name, kinds[eidto].name
        if (subject, object) != (relation.subject, relation.object):
            raise ValidationError(
                eidfrom,
                {
                    relation.name: f"{relation.name} relates a {relation.subject} to a "
                    f"{relation.object}, not a {subject} ({eidfrom}) to a {object} ({eidto})"
                },
            )

    def gone(self, eid: int, why: str = "") -> LookupError:
        """The error for an entity whose row is not there (any more)."""
        self.db.kinds.pop(eid, None)
        return LookupError(f"no entity has the eid {eid}{why}")

    def moved(self) -> SchemaMismatchError:
        """The error for a connection whose search_path changed since the store asked it."""
        self.databases.moved(self.conn)
        return SchemaMismatchError(
            f"this connection's search_path no longer resolves {EID_SEQUENCE} to the sequence "
            f"it did when the store first used the connection: the insert is not committed. "
            f"Set a connection's search_path when it is made (a pool per tenant, "
            f"server_settings=...); this connection is now asked at the start of each scope"
        )

    # -- the scope's bookkeeping -------------------------------------------------------------

    def doom(self, error: Exception) -> None:
        """The scope can no longer commit: a store action failed half-way with ``error``."""
        with contextlib.suppress(TransactionStateError):  # a scope already over commits nothing
            self.tx.doom(error)

    def wrote(self, xid: str) -> None:
        """A write returned the transaction's id: the scope's COMMIT need not carry it."""
        self.xid = xid
        note = getattr(self.tx, "note_transaction_id", None)
        if note is not None:
            note(xid)

    def unmark_deleted(self, eid: int) -> None:
        """A delete was cancelled: ``eid`` is not deleted in this scope after all."""
        self.tx.unmark_deleted(eid)


def _shown(statement: Statement) -> tuple[str, tuple[Any, ...]]:
    if isinstance(statement, Copy):
        return statement.sql, statement.args
    return statement
