"""The entity store: entities and relations on PostgreSQL, every data event on real rows.

Each action runs in the transaction scope open in the context (``current_transaction()``)
on its connection. Its input is checked first (nothing has run if it is refused); then the
``before_*`` hooks (which may change ``edited``, or raise ``Break`` to cancel), the write,
``mark_added`` / ``mark_deleted``, the ``after_*`` hooks (read-only ``edited``, ``entity``
the written row): see ``_action``. ``before_query`` and ``after_query`` surround every
statement. An error from a hook or a statement propagates, and dooms the scope
(``tx.doom``): a half-done action is never committed.

The pieces: ``Catalog`` (what the schema gives, built once), ``Databases`` (what is known
of each database), a ``ScopedStore`` per scope handed to the action modules (``_insert``,
``_update``, ``_delete``, ``_relate``, ``_reads``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, final

import asyncpg

from hookbus import (
    Bus,
    Edited,
    TransactionStateError,
    ValidationError,
    current_transaction,
)

from . import _delete, _insert, _reads, _relate, _update
from ._catalog import Catalog
from ._database import Databases
from ._entity import Entity
from ._schema import Schema, UnknownNameError
from ._scoped import ScopedStore
from ._tables import create_tables
from ._values import check_eid

__all__ = ["Store"]

_BATCH: Final = 10_000  # rows per COPY in insert_many
_ROLES: Final = ("subject", "object")
_NO_SCOPE: Final = (
    "the store works inside a transaction scope on PostgreSQL: open one with "
    "`async with hookbus_asyncpg.transaction(pool):`"
)
Progress = Callable[[int, int], object]


@final
class Store:
    """Entities and relations of ``schema`` on PostgreSQL, emitting every data event on ``bus``.

    >>> store = Store(bus, schema)  # doctest: +SKIP
    >>> await store.create_tables(pool)  # doctest: +SKIP
    >>> async with hookbus_asyncpg.transaction(pool):  # doctest: +SKIP
    ...     eid = await store.insert("Person", name="Ann", age=40)

    Every action needs an open ``hookbus_asyncpg.transaction()`` scope. Writes return
    whether they happened (``insert``: the eid, or ``None``): ``False`` / ``None`` when a
    ``before_*`` hook (``before_query`` included) raised ``Break``.
    """

    __slots__ = ("_bus", "_catalog", "_databases", "_key", "_schema")

    def __init__(self, bus: Bus, schema: Schema) -> None:
        if not isinstance(bus, Bus) or not isinstance(schema, Schema):
            raise TypeError("Store(bus, schema) takes a hookbus.Bus and a Schema")
        self._bus = bus
        self._schema = schema
        self._catalog = Catalog(schema)
        self._databases = Databases()
        self._key = f"hookbus_asyncpg.store.{id(self):x}"

    @property
    def bus(self) -> Bus:
        """The bus the store emits on."""
        return self._bus

    @property
    def schema(self) -> Schema:
        """The schema the store persists."""
        return self._schema

    async def create_tables(self, pool_or_connection: Any) -> list[str]:
        """Create the schema's missing tables, in one transaction; check the existing ones.

        Returns the tables created. ``SchemaMismatchError`` names every difference between
        an existing table and the declared schema (and nothing is created).
        """
        if isinstance(pool_or_connection, asyncpg.Pool):
            async with pool_or_connection.acquire() as conn, conn.transaction():
                created = await create_tables(conn, self._schema)
        else:
            conn = pool_or_connection
            if conn.is_in_transaction():  # inside a scope: its transaction is the one
                created = await create_tables(conn, self._schema)
            else:
                async with conn.transaction():
                    created = await create_tables(conn, self._schema)
        if created:
            self._databases.forget_connections()
        return created

    async def _scoped(self) -> ScopedStore:
        """This store in the current scope (its ``ScopedStore``), made on its first action there."""
        try:
            tx = current_transaction()
        except TransactionStateError:
            raise TransactionStateError(f"no transaction scope is open here: {_NO_SCOPE}") from None
        scoped: ScopedStore | None = tx.data.get(self._key)
        if scoped is None:
            connect = getattr(tx, "connect", None)
            if connect is None:
                raise TransactionStateError(f"this scope has no PostgreSQL connection: {_NO_SCOPE}")
            conn = await connect()  # the scope begins lazily: its first action begins it
            db = await self._databases.of(conn)
            scoped = tx.data[self._key] = ScopedStore(
                tx, conn, self._databases, db, self._catalog, self._bus.emit, self._key
            )
            scoped.hooks_for = self._bus.hooks_for
        return scoped

    # -- entities ---------------------------------------------------------------------------

    async def insert(self, etype: str, /, **attrs: Any) -> int | None:
        """Insert an entity; return its eid, or ``None`` if a before-hook cancelled it.

        One statement writes it, into the entities table and its type's table. Required
        attributes are checked once the ``before_add_entity`` hooks ran (they may set them).
        """
        kind = self._schema.entity(etype)
        kind.check(attrs, adding=True, required=False)
        edited = Edited(kind.with_defaults(attrs))
        return await _insert.insert(await self._scoped(), kind, edited)

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
        if type(batch_size) is not int or batch_size < 1:
            raise ValueError(f"batch_size is an int of at least 1, not {batch_size!r}")
        hooks_for = self._bus.hooks_for
        pending: list[Edited] | None = None
        values: list[dict[str, Any]] | None = None
        listed: list[Any] = []
        if hooks_for("before_add_entity", etype):
            # The hooks may set the required attributes: those are checked once they ran.
            pending = []
            for index, row in enumerate(rows):
                checked = dict(row)
                try:
                    kind.check(checked, adding=True, required=False)
                except (ValidationError, LookupError) as exc:
                    exc.add_note(f"in row {index} of insert_many({etype!r}); nothing was inserted")
                    raise
                pending.append(Edited(kind.with_defaults(checked)))
        else:
            # No hook can change the rows: each is checked whole (required attributes
            # included) a column at a time, and written as it is, not checked again.
            listed = list(rows)
            values = self._catalog.rows_check[etype](listed)
            if hooks_for("after_add_entity", etype):  # they get each entity as an Edited
                pending = [Edited(kind.with_defaults(dict(row))) for row in listed]
        scoped = await self._scoped()
        total = len(values) if values is not None else len(pending or ())
        if total == 0:
            return []
        eids = await _insert.take_eids(scoped, total)
        if eids is None:
            return [None] * total
        result: list[int | None] = []
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            result += await _insert.insert_batch(
                scoped,
                kind,
                eids[start:stop],
                None if pending is None else pending[start:stop],
                values=None if values is None else values[start:stop],
                rows=listed[start:stop],
            )
            if progress is not None:
                progress(stop, total)
        return result

    async def update(self, eid: int, /, **attrs: Any) -> bool:
        """Change attributes of an entity; ``False`` if a before-hook cancelled it.

        The old values are read first (``SELECT ... FOR UPDATE``), so the hooks get
        ``edited.oldnewvalue(attr)`` and ``entity`` as it was. ``False`` as well when the
        hooks removed every change from ``edited``: nothing was written then.
        """
        if not attrs:
            raise ValueError(f"update({eid!r}) names no attribute to change")
        _eid(eid)
        self._catalog.precheck(eid, attrs)
        return await _update.update(await self._scoped(), eid, attrs)

    async def delete(self, eid: int, /) -> bool:
        """Delete an entity and its relations; ``False`` if a before-hook cancelled it.

        The hooks get ``entity``, the row as it was, and the entity is
        ``deleted_in_transaction`` from the start (a cancelled delete unmarks it). Its
        relations are deleted first, each with the events ``delete_relation`` emits. If a
        before-hook deleted the entity itself, ``False``: the hook's delete did it and
        fired the after-hooks, this one fires none. A partner left without a relation it
        must have at least one of (``1``, ``+``) fails the transaction before COMMIT,
        unless it is deleted in the same transaction.
        """
        _eid(eid)
        return await _delete.delete(await self._scoped(), eid)

    # -- relations --------------------------------------------------------------------------

    async def add_relation(self, eidfrom: int, rtype: str, eidto: int) -> bool:
        """Relate ``eidfrom`` (subject) to ``eidto`` (object) by ``rtype``.

        ``False`` if a before-hook cancelled it. A relation that exists already, or that
        would give a side marked ``1`` or ``?`` a second partner, is a ``ValidationError``.
        """
        relation = self._schema.relation(rtype)
        return await _relate.add_relation(await self._scoped(), relation, eidfrom, eidto)

    async def delete_relation(self, eidfrom: int, rtype: str, eidto: int) -> bool:
        """Remove the relation ``rtype`` from ``eidfrom`` to ``eidto``.

        ``False`` if a before-hook cancelled it; ``LookupError`` if there is no such
        relation. A side that must keep at least one partner (``1``, ``+``) is checked
        before COMMIT.
        """
        relation = self._schema.relation(rtype)
        return await _relate.delete_relation(await self._scoped(), relation, eidfrom, eidto)

    # -- reads ------------------------------------------------------------------------------

    async def get(self, eid: int, /) -> Entity:
        """The entity ``eid``, whatever its type; ``LookupError`` if there is none.

        ``LookupError`` too when a load hook skipped it (``Break`` without a value).
        """
        _eid(eid)
        return await _reads.get(await self._scoped(), eid)

    async def related(self, eid: int, rtype: str, role: str = "subject") -> list[Any]:
        """The entities related to ``eid`` by ``rtype``, by eid.

        ``role="subject"``: ``eid`` is the subject, the objects are returned;
        ``role="object"``: ``eid`` is the object, the subjects are returned.
        """
        relation = self._schema.relation(rtype)
        if role not in _ROLES:
            raise ValueError(f"role is 'subject' or 'object', not {role!r}")
        _eid(eid)
        scoped = await self._scoped()
        return await _reads.related(scoped, eid, relation, role == "subject")

    async def load(self, etype: str, /, **filters: Any) -> list[Any]:
        """The entities of ``etype`` whose attributes equal ``filters`` (``None``: IS NULL)."""
        kind = self._schema.entity(etype)
        tests: list[tuple[str, bool]] = []
        args: list[Any] = []
        for attr, value in filters.items():
            if attr != "eid" and attr not in kind.attributes:
                raise UnknownNameError("attribute", attr, kind.columns, f" of {etype}")
            wanted = check_eid(value) if attr == "eid" else kind.attributes[attr].check(value)
            if value is not None and wanted is not None:
                raise ValidationError(None, {attr: f"{etype}.{attr} is compared to {wanted}"})
            tests.append((attr, value is None))
            if value is not None:
                args.append(value)
        return await _reads.load(await self._scoped(), kind, tuple(tests), tuple(args))


def _eid(eid: Any) -> None:
    problem = check_eid(eid)
    if problem is not None:
        raise TypeError(f"an eid is {problem}, not {eid!r}")
