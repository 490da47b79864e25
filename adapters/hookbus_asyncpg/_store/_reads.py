"""The store's reads: ``get``, ``related``, ``load``.

Reads emit ``before_load`` and ``after_load`` for each row: a ``Break`` skips the row, or,
when it carries a value (``raise Break(cached)``), serves that value in the row's place.
In ``get`` the ``before_load`` hooks run before the statement (``row`` is ``None``), so a
cache can answer without a query; in ``load`` and ``related`` they see the raw record.
"""

from __future__ import annotations

from typing import Any

from hookbus import Break, LoadEvent, ValidationError

from ._entity import Entity, entity_of
from ._schema import EntityType, RelationType
from ._scoped import ScopedStore, Stopped

__all__ = ["get", "load", "related"]


async def get(scoped: ScopedStore, eid: int) -> Entity:
    """The entity ``eid``; ``LookupError`` if there is none or a load hook skipped it."""
    try:
        kind = await scoped.kind_of(eid)
    except Stopped:
        raise LookupError(f"entity {eid}: a before_query hook cancelled the lookup") from None
    tx, emit = scoped.tx, scoped.emit
    broken = await emit("before_load", LoadEvent("before_load", kind.name, eid, None, tx))
    if broken is not None:
        served: Entity = _served(broken, eid)
        return served
    try:
        rows = await scoped.run(scoped.catalog.entity_sql[kind.name].select, (eid,))
    except Stopped:
        raise LookupError(f"entity {eid}: a before_query hook cancelled the read") from None
    if not rows:
        raise scoped.gone(eid)
    entity = entity_of(kind, rows[0])
    broken = await emit("after_load", LoadEvent("after_load", kind.name, eid, entity, tx))
    if broken is not None:
        served = _served(broken, eid)
        return served
    return entity


async def related(
    scoped: ScopedStore, eid: int, relation: RelationType, as_subject: bool
) -> list[Any]:
    """The entities related to ``eid`` (the subject when ``as_subject``) by ``relation``."""
    try:
        kind = await scoped.kind_of(eid)
    except Stopped:
        return []
    rtype = relation.name
    expected = relation.subject if as_subject else relation.object
    if kind.name != expected:
        role = "subject" if as_subject else "object"
        raise ValidationError(
            eid, {rtype: f"the {role} of {rtype} is a {expected}; {eid} is a {kind.name}"}
        )
    statements = scoped.catalog.relation_sql[rtype]
    other = scoped.catalog.schema.entity(relation.object if as_subject else relation.subject)
    sql = statements.objects if as_subject else statements.subjects
    return await load_rows(scoped, other, sql, (eid,))


async def load(
    scoped: ScopedStore,
    kind: EntityType,
    tests: tuple[tuple[str, bool], ...],
    args: tuple[Any, ...],
) -> list[Any]:
    """The entities of ``kind`` passing ``tests`` (checked filters)."""
    sql = scoped.catalog.entity_sql[kind.name].load(tests)
    return await load_rows(scoped, kind, sql, args)


async def load_rows(
    scoped: ScopedStore, kind: EntityType, sql: str, args: tuple[Any, ...]
) -> list[Any]:
    """Run ``sql`` and load each row through the load hooks."""
    try:
        rows = await scoped.run(sql, args)
    except Stopped:
        return []
    if not rows:
        return []
    tx, etype, emit, db = scoped.tx, kind.name, scoped.emit, scoped.db
    loaded: list[Any] = []
    for record in rows:
        eid = record[0]
        broken = await emit("before_load", LoadEvent("before_load", etype, eid, record, tx))
        if broken is None:
            entity = entity_of(kind, record)
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
