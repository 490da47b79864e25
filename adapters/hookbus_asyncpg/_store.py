"""The entity store: entities and relations on PostgreSQL, every data event on real rows.

Each action runs in the transaction scope open in the context (``current_transaction()``)
on its connection, and goes: check the input (nothing has run yet if it is refused), the
``before_*`` hooks (which may change ``edited``, or raise ``Break`` to cancel), the write in
one statement, ``mark_added`` / ``mark_deleted``, the ``after_*`` hooks (read-only
``edited``, ``entity`` the written row). ``delete`` first deletes the entity's relations,
with their own events (see there). ``before_query`` and ``after_query`` surround every
statement. An error from a hook or a statement propagates; if it is caught inside the scope,
the scope still fails at commit with it (``Failed``), so a half-done action never commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, final

import asyncpg

from hookbus import (
    Edited,
    EntityEvent,
    QueryEvent,
    RelationEvent,
    Transaction,
    ValidationError,
)

from ._entity import Entity
from ._plumbing import _entity
from ._reads import Reads
from ._schema import ENTITIES_TABLE, EntityType
from ._statements import ALLOCATE_EIDS, DELETE_ENTITY
from ._support import Database, fail_at_commit
from ._tables import create_tables

__all__ = ["Store"]

_BLOCK: Final = 64  # eids fetched at once for single inserts: one round trip in 64
_BATCH: Final = 10_000  # rows per COPY in insert_many
Progress = Callable[[int, int], object]


@final
class Store(Reads):
    """Entities and relations of ``schema`` on PostgreSQL, emitting every data event on ``bus``.

    >>> store = Store(bus, schema)  # doctest: +SKIP
    >>> await store.create_tables(pool)  # doctest: +SKIP
    >>> async with hookbus_asyncpg.transaction(pool):  # doctest: +SKIP
    ...     eid = await store.insert("Person", name="Ann", age=40)

    Every action needs an open ``hookbus_asyncpg.transaction()`` scope. Writes return
    whether they happened (``insert``: the eid, or ``None``): ``False`` / ``None`` when a
    ``before_*`` hook (``before_query`` included) raised ``Break``.
    """

    __slots__ = ()

    async def create_tables(self, pool_or_connection: Any) -> list[str]:
        """Create the schema's missing tables, in one transaction; check the existing ones.

        Returns the tables created. ``SchemaMismatchError`` names every difference between
        an existing table and the declared schema (and nothing is created).
        """
        if isinstance(pool_or_connection, asyncpg.Pool):
            async with pool_or_connection.acquire() as conn, conn.transaction():
                return await create_tables(conn, self._schema)
        conn = pool_or_connection
        if conn.is_in_transaction():  # inside a scope: its transaction is the one
            return await create_tables(conn, self._schema)
        async with conn.transaction():
            return await create_tables(conn, self._schema)

    # -- entities ---------------------------------------------------------------------------

    async def insert(self, etype: str, /, **attrs: Any) -> int | None:
        """Insert an entity; return its eid, or ``None`` if a before-hook cancelled it.

        One statement writes it, into the entities table and its type's table; its eid
        comes from a block fetched ahead, so that a single insert is one round trip.
        """
        kind = self._schema.entity(etype)
        kind.check(attrs, adding=True)
        edited = Edited(kind.with_defaults(attrs))
        tx, conn, db = self._scope()
        free = db.free
        if free:
            eid = free.pop()
        else:
            # Other scopes may take from the free list while this one waits: the eid comes
            # from the block fetched, and only the rest of the block goes to the free list.
            fresh = await self._allocate(tx, conn, _BLOCK)
            if fresh is None:
                return None
            eid = fresh.pop()
            free[:0] = fresh
        emit = self._bus.emit
        try:
            event = EntityEvent("before_add_entity", etype, eid, edited, None, tx)
            if await emit("before_add_entity", event) is not None:
                return None
            _recheck(kind, edited, eid, "before_add_entity", adding=True)
            columns = tuple(edited)
            sql = self._entity_sql[etype].insert(columns)
            try:
                rows = await self._run(tx, conn, sql, (eid, etype, *edited.values()))
            except asyncpg.UniqueViolationError as exc:
                raise self._unique(exc, eid, edited) from exc
            if rows is None:
                return None
            tx.mark_added(eid)
            db.know(eid, kind)
            if self._mandatory_of[etype]:
                self._note_mandatory(tx, self._mandatory_of[etype], eid)
            entity = _entity(kind, rows[0])
            event = EntityEvent("after_add_entity", etype, eid, edited.readonly(), entity, tx)
            await emit("after_add_entity", event)
        except Exception as exc:
            fail_at_commit(tx, exc)
            raise
        return eid

    async def insert_many(
        self,
        etype: str,
        rows: Iterable[Mapping[str, Any]],
        *,
        progress: Progress | None = None,
        batch_size: int = _BATCH,
    ) -> list[int | None]:
        """Insert many entities with COPY; the events still fire for each entity.

        Every row is checked before anything runs. Then, per batch of ``batch_size`` rows:
        the ``before_add_entity`` hooks of each, one COPY into each table for the rows not
        cancelled, the ``after_add_entity`` hooks of each, and ``progress(done, total)``.
        Returns the eids in the order of ``rows``, ``None`` for a cancelled row.
        """
        kind = self._schema.entity(etype)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        pending: list[Edited] = []
        for index, row in enumerate(rows):
            values = dict(row)
            try:
                kind.check(values, adding=True)
            except Exception as exc:
                exc.add_note(f"in row {index} of insert_many({etype!r}); nothing was inserted")
                raise
            pending.append(Edited(kind.with_defaults(values)))
        total = len(pending)
        tx, conn, db = self._scope()
        if total == 0:
            return []
        # Take what the free list holds now, without awaiting in between (other scopes take
        # from it too), then fetch the rest: those fresh eids are this call's alone.
        free = db.free
        taken = min(total, len(free))
        eids = free[len(free) - taken :][::-1]  # the smallest first
        del free[len(free) - taken :]
        if taken < total:
            fresh = await self._allocate(tx, conn, total - taken)
            if fresh is None:
                free += reversed(eids)  # unused: back to the free list
                return [None] * total
            eids += reversed(fresh)
        result: list[int | None] = []
        try:
            for start in range(0, total, batch_size):
                batch = range(start, min(start + batch_size, total))
                result += await self._insert_batch(tx, conn, db, kind, eids, pending, batch)
                if progress is not None:
                    progress(batch.stop, total)
        except Exception as exc:
            fail_at_commit(tx, exc)
            raise
        return result

    async def _insert_batch(
        self,
        tx: Transaction,
        conn: Any,
        db: Database,
        kind: EntityType,
        eids: list[int],
        pending: list[Edited],
        batch: range,
    ) -> list[int | None]:
        etype, emit = kind.name, self._bus.emit
        columns = kind.columns
        result: list[int | None] = []
        records: list[tuple[Any, ...]] = []
        written: list[tuple[int, Edited]] = []
        for i in batch:
            eid, edited = eids[i], pending[i]
            event = EntityEvent("before_add_entity", etype, eid, edited, None, tx)
            if await emit("before_add_entity", event) is not None:
                result.append(None)
                continue
            _recheck(kind, edited, eid, "before_add_entity", adding=True)
            records.append((eid, *[edited.get(c) for c in columns]))
            written.append((eid, edited))
            result.append(eid)
        if not records:
            return result
        statements = self._entity_sql[etype]
        typed = (statements.copy, (records,))
        entities = (statements.copy_entities, ([(r[0], etype) for r in records],))
        # Both statements are announced before either runs: a Break on the second must not
        # leave the first half-written.
        for sql, args in (entities, typed):
            query = QueryEvent("before_query", sql, args, None, tx)
            if await emit("before_query", query) is not None:
                return [None] * len(batch)
        names = ["eid", *columns]
        try:
            await conn.copy_records_to_table(ENTITIES_TABLE, records=entities[1][0])
            status = await conn.copy_records_to_table(kind.table, records=records, columns=names)
        except asyncpg.UniqueViolationError as exc:
            raise self._unique(exc, None, None) from exc
        for sql, args in (entities, typed):
            await emit("after_query", QueryEvent("after_query", sql, args, _count(status), tx))
        mandatory = self._mandatory_of[etype]
        for eid, edited in written:
            tx.mark_added(eid)
            db.know(eid, kind)
            if mandatory:
                self._note_mandatory(tx, mandatory, eid)
            entity = Entity(etype, eid, {c: edited.get(c) for c in columns})
            event = EntityEvent("after_add_entity", etype, eid, edited.readonly(), entity, tx)
            await emit("after_add_entity", event)
        return result

    async def update(self, eid: int, /, **attrs: Any) -> bool:
        """Change attributes of an entity; ``False`` if a before-hook cancelled it.

        The old values are read first (``SELECT ... FOR UPDATE``), so the hooks get
        ``edited.oldnewvalue(attr)`` and ``entity`` as it was. ``False`` as well when the
        hooks removed every change from ``edited``: nothing was written then.
        """
        if not attrs:
            raise ValueError(f"update({eid!r}) names no attribute to change")
        tx, conn, db = self._scope()
        kind = await self._kind(tx, conn, db, eid)
        if kind is None:
            return False
        kind.check(attrs, eid, adding=False)
        statements = self._entity_sql[kind.name]
        old = await self._run(tx, conn, statements.select_for_update, (eid,))
        if old is None:
            return False
        if not old:
            raise self._gone(db, eid)
        before = _entity(kind, old[0])
        edited = Edited(attrs, old=before)
        emit = self._bus.emit
        try:
            event = EntityEvent("before_update_entity", kind.name, eid, edited, before, tx)
            if await emit("before_update_entity", event) is not None or not edited:
                return False
            _recheck(kind, edited, eid, "before_update_entity", adding=False)
            sql = statements.update(tuple(edited))
            try:
                rows = await self._run(tx, conn, sql, (eid, *edited.values()))
            except asyncpg.UniqueViolationError as exc:
                raise self._unique(exc, eid, edited) from exc
            if rows is None:
                return False
            entity = _entity(kind, rows[0])
            readonly = edited.readonly()
            event = EntityEvent("after_update_entity", kind.name, eid, readonly, entity, tx)
            await emit("after_update_entity", event)
        except Exception as exc:
            fail_at_commit(tx, exc)
            raise
        return True

    async def delete(self, eid: int, /) -> bool:
        """Delete an entity and its relations; ``False`` if a before-hook cancelled it.

        The hooks get ``entity``, the row as it was. Its relations are deleted first, each
        with the events ``delete_relation`` emits: after ``before_delete_entity``, one
        ``SELECT`` per relation type finds the entity's relations (either role), and
        ``before_delete_relation`` runs for each (a ``Break`` there cancels the whole delete:
        nothing is written); then one ``DELETE`` per relation type, followed by
        ``after_delete_relation`` for each of its rows; then the entity's ``DELETE`` and
        ``after_delete_entity``. A partner left without a relation it must have at least
        one of (``1``, ``+``) fails the transaction at precommit, unless it is deleted in
        the same transaction.
        """
        tx, conn, db = self._scope()
        kind = await self._kind(tx, conn, db, eid)
        if kind is None:
            return False
        old = await self._run(tx, conn, self._entity_sql[kind.name].select_for_delete, (eid,))
        if old is None:
            return False
        if not old:
            raise self._gone(db, eid)
        entity = _entity(kind, old[0])
        edited = Edited()
        emit = self._bus.emit
        try:
            event = EntityEvent("before_delete_entity", kind.name, eid, edited, entity, tx)
            if await emit("before_delete_entity", event) is not None:
                return False
            found: list[tuple[str, list[Any]]] = []  # (rtype, its rows) with rows only
            for rtype in self._relations_of[kind.name]:
                rows = await self._run(tx, conn, self._relation_sql[rtype].touching, (eid,))
                if rows is None:
                    return False
                if rows:
                    found.append((rtype, rows))
            for rtype, rows in found:
                for eidfrom, eidto in rows:
                    unlinked = RelationEvent("before_delete_relation", rtype, eidfrom, eidto, tx)
                    if await emit("before_delete_relation", unlinked) is not None:
                        return False
            # Every write is announced before any runs: a Break on the entity's DELETE must
            # not leave its relations deleted.
            writes = [(self._relation_sql[rtype].delete_touching, (eid,)) for rtype, _ in found]
            writes.append((DELETE_ENTITY, (eid,)))
            if not await self._announce(tx, writes):
                return False
            for (rtype, rows), (sql, args) in zip(found, writes[:-1], strict=True):
                await self._fetch(tx, conn, sql, args)
                self._note_unlinked(tx, self._schema.relation(rtype), rows)
                for eidfrom, eidto in rows:
                    unlinked = RelationEvent("after_delete_relation", rtype, eidfrom, eidto, tx)
                    await emit("after_delete_relation", unlinked)
            await self._fetch(tx, conn, *writes[-1])
            tx.mark_deleted(eid)
            readonly = edited.readonly()
            event = EntityEvent("after_delete_entity", kind.name, eid, readonly, entity, tx)
            await emit("after_delete_entity", event)
        except Exception as exc:
            fail_at_commit(tx, exc)
            raise
        return True

    # -- relations --------------------------------------------------------------------------

    async def add_relation(self, eidfrom: int, rtype: str, eidto: int) -> bool:
        """Relate ``eidfrom`` (subject) to ``eidto`` (object) by ``rtype``.

        ``False`` if a before-hook cancelled it. A relation that exists already, or that
        would give a side marked ``1`` or ``?`` a second partner, is a ``ValidationError``.
        """
        relation = self._schema.relation(rtype)
        tx, conn, db = self._scope()
        if not await self._check_sides(tx, conn, db, relation, eidfrom, eidto):
            return False
        statements = self._relation_sql[rtype]
        emit = self._bus.emit
        try:
            event = RelationEvent("before_add_relation", rtype, eidfrom, eidto, tx)
            if await emit("before_add_relation", event) is not None:
                return False
            try:
                rows = await self._run(tx, conn, statements.insert, (eidfrom, eidto))
            except asyncpg.UniqueViolationError as exc:
                raise self._unique(exc, eidfrom, None, eidto) from exc
            except asyncpg.ForeignKeyViolationError as exc:
                raise LookupError(f"{rtype}: entity {eidfrom} or {eidto} no longer exists") from exc
            if rows is None:
                return False
            event = RelationEvent("after_add_relation", rtype, eidfrom, eidto, tx)
            await emit("after_add_relation", event)
        except Exception as exc:
            fail_at_commit(tx, exc)
            raise
        return True

    async def delete_relation(self, eidfrom: int, rtype: str, eidto: int) -> bool:
        """Remove the relation ``rtype`` from ``eidfrom`` to ``eidto``.

        ``False`` if a before-hook cancelled it; ``LookupError`` if there is no such
        relation. A side that must keep at least one partner (``1``, ``+``) is checked at
        precommit.
        """
        relation = self._schema.relation(rtype)
        tx, conn, db = self._scope()
        if not await self._check_sides(tx, conn, db, relation, eidfrom, eidto):
            return False
        statements = self._relation_sql[rtype]
        found = await self._run(tx, conn, statements.check, (eidfrom, eidto))
        if found is None:
            return False
        if not found:
            raise LookupError(f"no relation {eidfrom} {rtype} {eidto}")
        emit = self._bus.emit
        try:
            event = RelationEvent("before_delete_relation", rtype, eidfrom, eidto, tx)
            if await emit("before_delete_relation", event) is not None:
                return False
            if await self._run(tx, conn, statements.delete, (eidfrom, eidto)) is None:
                return False
            self._note_unlinked(tx, relation, ((eidfrom, eidto),))
            event = RelationEvent("after_delete_relation", rtype, eidfrom, eidto, tx)
            await emit("after_delete_relation", event)
        except Exception as exc:
            fail_at_commit(tx, exc)
            raise
        return True

    # -- the plumbing -----------------------------------------------------------------------

    async def _allocate(self, tx: Transaction, conn: Any, n: int) -> list[int] | None:
        """``n`` fresh eids, descending; ``None`` if a before_query hook refused.

        They are the caller's alone: it puts those it does not use on the free list itself,
        with no await in between, so that no other scope can take them meanwhile.
        """
        rows = await self._run(tx, conn, ALLOCATE_EIDS, (n,))
        if rows is None:
            return None
        return sorted(rows[0][0], reverse=True)

    async def _announce(
        self, tx: Transaction, statements: list[tuple[str, tuple[Any, ...]]]
    ) -> bool:
        """``before_query`` for each of ``statements``; ``False`` if a hook broke."""
        emit = self._bus.emit
        for sql, args in statements:
            query = QueryEvent("before_query", sql, args, None, tx)
            if await emit("before_query", query) is not None:
                return False
        return True

    async def _fetch(self, tx: Transaction, conn: Any, sql: str, args: tuple[Any, ...]) -> None:
        """Run a statement already announced by :meth:`_announce`, then ``after_query``."""
        rows = await conn.fetch(sql, *args)
        await self._bus.emit("after_query", QueryEvent("after_query", sql, args, len(rows), tx))

    def _unique(
        self, exc: asyncpg.UniqueViolationError, eid: Any, edited: Edited | None, other: Any = None
    ) -> ValidationError:
        """Turn a UNIQUE violation into the ValidationError it means."""
        found = self._constraints.get(getattr(exc, "constraint_name", None) or "")
        if found is None:
            return ValidationError(eid, {None: str(exc)})
        field, message = found
        value = edited.get(field) if edited is not None else None
        return ValidationError(eid, {field: message.format(eid=eid, other=other, value=value)})


def _recheck(kind: EntityType, edited: Edited, eid: int, event: str, *, adding: bool) -> None:
    """Check ``edited`` again: the before-hooks may have changed it."""
    try:
        kind.check(edited, eid, adding=adding)
    except Exception as exc:
        exc.add_note(f"as the {event} hooks left it")
        raise


def _count(status: str) -> int:
    """The row count at the end of a command status (``COPY 10000``)."""
    return int(status.rsplit(" ", 1)[-1])
