"""What every action of the store stands on: its state, and the helpers reads and writes share.

The state is built once from the schema: the statements of each type, the message of each
UNIQUE constraint, the "at least one" sides of each entity type, and what the store knows of
each database (``_support.Database``). The helpers find the scope and its connection, run a
statement between its query events, and check eids and their types; writes also note the
entities whose "at least one" relations (cardinality ``1``, ``+``) ``CheckMandatory`` checks
at precommit.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

from hookbus import (
    Bus,
    Operation,
    QueryEvent,
    Transaction,
    TransactionStateError,
    ValidationError,
    current_transaction,
)

from ._entity import Entity
from ._schema import EntityType, RelationType, Schema
from ._statements import LOOKUP_ETYPES, EntityStatements, RelationStatements
from ._support import Database, database_key

__all__ = ["CheckMandatory", "Plumbing"]


class CheckMandatory(Operation):
    """At precommit: every entity noted still has its "at least one" relations (``1``, ``+``).

    Values are ``(rtype, as_subject, eid)``; each store makes a subclass naming itself.
    """

    __slots__ = ()

    store: ClassVar[Plumbing]

    async def precommit(self) -> None:
        await self.store._check_mandatory(self.values)


class Plumbing:
    """The state and helpers of every action of the store; :class:`Store` builds on it."""

    __slots__ = (
        "_bus",
        "_constraints",
        "_databases",
        "_entity_sql",
        "_key",
        "_mandatory_key",
        "_mandatory_of",
        "_mandatory_op",
        "_relation_sql",
        "_relations_of",
        "_schema",
    )

    def __init__(self, bus: Bus, schema: Schema) -> None:
        if not isinstance(bus, Bus) or not isinstance(schema, Schema):
            raise TypeError("Store(bus, schema) takes a hookbus.Bus and a Schema")
        self._bus = bus
        self._schema = schema
        entities = schema.entities
        self._entity_sql = {name: EntityStatements(kind) for name, kind in entities.items()}
        self._relation_sql = {
            name: RelationStatements(rel, entities[rel.subject], entities[rel.object])
            for name, rel in schema.relations.items()
        }
        # UNIQUE constraint name -> (field, message) for the ValidationError it becomes.
        self._constraints: dict[str, tuple[str, str]] = {}
        mandatory: dict[str, list[tuple[str, bool]]] = {name: [] for name in entities}
        for kind in entities.values():
            for attr in kind.unique:
                self._constraints[f"{kind.table}_{attr}_key"] = (
                    attr,
                    f"{kind.name}.{attr} is unique: {{value!r}} is taken",
                )
        for name, rel in schema.relations.items():
            self._constraints[f"{rel.table}_pkey"] = (
                name,
                f"{{eid}} {name} {{other}} exists already",
            )
            self._constraints[f"{rel.table}_eid_from_key"] = (
                name,
                f"a {rel.subject} has at most one {name} (cardinality {rel.cardinality!r}); "
                f"{{eid}} has one already",
            )
            self._constraints[f"{rel.table}_eid_to_key"] = (
                name,
                f"a {rel.object} is the {name} of at most one {rel.subject} (cardinality "
                f"{rel.cardinality!r}); {{other}} is already",
            )
            if rel.cardinality[0] in "1+":
                mandatory[rel.subject].append((name, True))
            if rel.cardinality[1] in "1+":
                mandatory[rel.object].append((name, False))
        self._mandatory_of = {name: tuple(pairs) for name, pairs in mandatory.items()}
        # The relation types an entity type takes part in, in either role.
        self._relations_of = {
            name: tuple(
                rname
                for rname, rel in schema.relations.items()
                if name in (rel.subject, rel.object)
            )
            for name in entities
        }
        self._mandatory_op = type("CheckMandatory", (CheckMandatory,), {"store": self})
        self._key = f"hookbus_asyncpg.store.{id(self):x}"
        self._mandatory_key: Hashable = (self._key, "mandatory")
        self._databases: dict[Hashable, Database] = {}

    @property
    def bus(self) -> Bus:
        """The bus the store emits on."""
        return self._bus

    @property
    def schema(self) -> Schema:
        """The schema the store persists."""
        return self._schema

    def _scope(self) -> tuple[Transaction, Any, Database]:
        """The current scope, its connection, and what the store knows of its database."""
        tx = current_transaction()
        found = tx.data.get(self._key)
        if found is None:
            conn = getattr(tx, "connection", None)
            if conn is None:
                raise TransactionStateError(
                    "the store works inside a scope on PostgreSQL: open it with "
                    "`async with hookbus_asyncpg.transaction(pool):`"
                )
            db = self._databases.setdefault(database_key(conn), Database())
            found = tx.data[self._key] = (conn, db)
        return tx, found[0], found[1]

    async def _run(
        self, tx: Transaction, conn: Any, sql: str, args: tuple[Any, ...]
    ) -> list[Any] | None:
        """Run one statement between its query events; ``None`` if before_query broke."""
        emit = self._bus.emit
        if await emit("before_query", QueryEvent("before_query", sql, args, None, tx)) is not None:
            return None
        rows: list[Any] = await conn.fetch(sql, *args)
        await emit("after_query", QueryEvent("after_query", sql, args, len(rows), tx))
        return rows

    async def _kind(self, tx: Transaction, conn: Any, db: Database, eid: Any) -> EntityType | None:
        """The type of ``eid``; ``LookupError`` if no such entity, ``None`` if cancelled."""
        problem = _eid_problem(eid)
        if problem is not None:
            raise TypeError(f"an eid is {problem}, not {eid!r}")
        kind = db.kinds.get(eid)
        if kind is not None:
            return kind
        rows = await self._run(tx, conn, LOOKUP_ETYPES, ([eid],))
        if rows is None:
            return None
        if not rows:
            raise LookupError(f"no entity has the eid {eid}")
        kind = self._schema.entity(rows[0][1])
        db.know(eid, kind)
        return kind

    async def _check_sides(
        self,
        tx: Transaction,
        conn: Any,
        db: Database,
        relation: RelationType,
        eidfrom: Any,
        eidto: Any,
    ) -> bool:
        """Check that both eids exist with the types ``relation`` wants; ``False`` if cancelled."""
        for eid in (eidfrom, eidto):
            problem = _eid_problem(eid)
            if problem is not None:
                raise TypeError(f"{relation.name}: an eid is {problem}, not {eid!r}")
        kinds = db.kinds
        unknown = [eid for eid in {eidfrom, eidto} if eid not in kinds]
        if unknown:
            rows = await self._run(tx, conn, LOOKUP_ETYPES, (unknown,))
            if rows is None:
                return False
            for eid, etype in rows:
                db.know(eid, self._schema.entity(etype))
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
        return True

    def _gone(self, db: Database, eid: int) -> LookupError:
        db.kinds.pop(eid, None)
        return LookupError(f"no entity has the eid {eid}")

    def _note_mandatory(
        self, tx: Transaction, relations: Sequence[tuple[str, bool]], eid: int
    ) -> None:
        for rtype, as_subject in relations:
            tx.accumulate(self._mandatory_key, (rtype, as_subject, eid), self._mandatory_op)

    def _note_unlinked(self, tx: Transaction, relation: RelationType, pairs: Sequence[Any]) -> None:
        """Relations ``(eidfrom, eidto)`` were deleted: check "at least one" sides at precommit.

        An entity deleted in the same transaction is skipped then: it needs no partner.
        """
        subject, object = relation.cardinality[0] in "1+", relation.cardinality[1] in "1+"
        if not (subject or object):
            return
        key, op, rtype = self._mandatory_key, self._mandatory_op, relation.name
        for eidfrom, eidto in pairs:
            if subject:
                tx.accumulate(key, (rtype, True, eidfrom), op)
            if object:
                tx.accumulate(key, (rtype, False, eidto), op)

    async def _check_mandatory(self, values: set[tuple[str, bool, int]]) -> None:
        tx, conn, _ = self._scope()
        groups: dict[tuple[str, bool], list[int]] = {}
        for rtype, as_subject, eid in values:
            if not tx.deleted(eid):
                groups.setdefault((rtype, as_subject), []).append(eid)
        for (rtype, as_subject), eids in sorted(groups.items()):
            statements = self._relation_sql[rtype]
            sql = statements.missing_object if as_subject else statements.missing_subject
            rows = await self._run(tx, conn, sql, (sorted(eids),))
            if rows:
                relation = self._schema.relation(rtype)
                lacking = sorted(row[0] for row in rows)
                role = "subject" if as_subject else "object"
                shown = ", ".join(map(str, lacking[:5])) + (", ..." if len(lacking) > 5 else "")
                raise ValidationError(
                    lacking[0],
                    {
                        rtype: f"cardinality {relation.cardinality!r}: as {role}, each of "
                        f"{shown} needs at least one {rtype}"
                    },
                )


def _eid_problem(eid: Any) -> str | None:
    if type(eid) is bool or not isinstance(eid, int):
        return "an int"
    return None


def _entity(kind: EntityType, record: Any) -> Entity:
    return Entity(kind.name, record[0], dict(zip(kind.columns, record[1:], strict=True)))
