"""The store's reads: ``get``, ``related``, ``load``.

Reads emit ``before_load`` and ``after_load`` for each row: a ``Break`` skips the row, or,
when it carries a value (``raise Break(cached)``), serves that value in the row's place.
In ``get`` the ``before_load`` hooks run before the statement (``row`` is ``None``), so a
cache can answer without a query; in ``load`` and ``related`` they see the raw record.
"""

from __future__ import annotations

from typing import Any

from hookbus import Break, LoadEvent, Transaction, ValidationError

from ._entity import Entity
from ._plumbing import Plumbing, _eid_problem, _entity
from ._schema import EntityType, UnknownNameError
from ._support import Database

__all__ = ["Reads"]

_ROLES = ("subject", "object")


class Reads(Plumbing):
    """What the :class:`Store` reads."""

    __slots__ = ()

    async def get(self, eid: int, /) -> Entity:
        """The entity ``eid``, whatever its type; ``LookupError`` if there is none.

        ``LookupError`` too when a load hook skipped it (``Break`` without a value).
        """
        tx, conn, db = self._scope()
        kind = await self._kind(tx, conn, db, eid)
        if kind is None:
            raise LookupError(f"entity {eid}: a before_query hook cancelled the lookup")
        emit = self._bus.emit
        broken = await emit("before_load", LoadEvent("before_load", kind.name, eid, None, tx))
        if broken is not None:
            served: Entity = _served(broken, eid)
            return served
        rows = await self._run(tx, conn, self._entity_sql[kind.name].select, (eid,))
        if rows is None:
            raise LookupError(f"entity {eid}: a before_query hook cancelled the read")
        if not rows:
            raise self._gone(db, eid)
        entity = _entity(kind, rows[0])
        broken = await emit("after_load", LoadEvent("after_load", kind.name, eid, entity, tx))
        if broken is not None:
            served = _served(broken, eid)
            return served
        return entity

    async def related(self, eid: int, rtype: str, role: str = "subject") -> list[Any]:
        """The entities related to ``eid`` by ``rtype``, by eid.

        ``role="subject"``: ``eid`` is the subject, the objects are returned;
        ``role="object"``: ``eid`` is the object, the subjects are returned.
        """
        relation = self._schema.relation(rtype)
        if role not in _ROLES:
            raise ValueError(f"role is 'subject' or 'object', not {role!r}")
        as_subject = role == "subject"
        tx, conn, db = self._scope()
        kind = await self._kind(tx, conn, db, eid)
        if kind is None:
            return []
        expected = relation.subject if as_subject else relation.object
        if kind.name != expected:
            raise ValidationError(
                eid, {rtype: f"the {role} of {rtype} is a {expected}; {eid} is a {kind.name}"}
            )
        statements = self._relation_sql[rtype]
        other = self._schema.entity(relation.object if as_subject else relation.subject)
        sql = statements.objects if as_subject else statements.subjects
        return await self._load_rows(tx, conn, db, other, sql, (eid,))

    async def load(self, etype: str, /, **filters: Any) -> list[Any]:
        """The entities of ``etype`` whose attributes equal ``filters`` (``None``: IS NULL)."""
        kind = self._schema.entity(etype)
        tests: list[tuple[str, bool]] = []
        args: list[Any] = []
        for attr, value in filters.items():
            if attr != "eid" and attr not in kind.attributes:
                raise UnknownNameError("attribute", attr, kind.columns, f" of {etype}")
            wanted = _eid_problem(value) if attr == "eid" else kind.attributes[attr].check(value)
            if value is not None and wanted is not None:
                raise ValidationError(None, {attr: f"{etype}.{attr} is compared to {wanted}"})
            tests.append((attr, value is None))
            if value is not None:
                args.append(value)
        tx, conn, db = self._scope()
        sql = self._entity_sql[etype].load(tuple(tests))
        return await self._load_rows(tx, conn, db, kind, sql, tuple(args))

    async def _load_rows(
        self,
        tx: Transaction,
        conn: Any,
        db: Database,
        kind: EntityType,
        sql: str,
        args: tuple[Any, ...],
    ) -> list[Any]:
        rows = await self._run(tx, conn, sql, args)
        if not rows:
            return []
        etype, emit = kind.name, self._bus.emit
        loaded: list[Any] = []
        for record in rows:
            eid = record[0]
            broken = await emit("before_load", LoadEvent("before_load", etype, eid, record, tx))
            if broken is None:
                entity = _entity(kind, record)
                db.know(eid, kind)
                broken = await emit("after_load", LoadEvent("after_load", etype, eid, entity, tx))
                if broken is None:
                    loaded.append(entity)
                    continue
            if broken.value is not None:
                loaded.append(broken.value)
        return loaded


def _served(broken: Break, eid: int) -> Any:
    if broken.value is None:
        raise LookupError(f"entity {eid} was skipped by a load hook")
    return broken.value
