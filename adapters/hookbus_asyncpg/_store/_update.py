"""Changing the attributes of an entity, with its events.

The values are checked before any statement (against every type declaring the attribute
when the eid's type is not known yet, then against its own type). The old values are read
first (``SELECT ... FOR UPDATE``), so that the hooks get ``edited.oldnewvalue(attr)`` and
``entity`` as it was.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from hookbus import Edited, EntityEvent

from ._action import act
from ._entity import entity_of
from ._insert import recheck
from ._scoped import ScopedStore, stoppable

__all__ = ["update"]


@stoppable(False)
async def update(scoped: ScopedStore, eid: int, attrs: dict[str, Any]) -> bool:
    """Change ``attrs`` of ``eid`` (prechecked); ``False`` if cancelled or nothing is left."""
    kind = await scoped.kind_of(eid)
    kind.check(attrs, eid, adding=False, required=False)
    statements = scoped.catalog.entity_sql[kind.name]
    old = await scoped.run(statements.select_for_update, (eid,))
    if not old:
        raise scoped.gone(eid)
    tx, etype = scoped.tx, kind.name
    entity = entity_of(kind, old[0])
    edited = Edited(attrs, old=entity)

    async def write() -> EntityEvent | None:
        if not edited:  # the hooks removed every change
            return None
        recheck(kind, edited, eid, "before_update_entity", adding=False)
        sql = statements.update(tuple(edited))
        try:
            rows = await scoped.run(sql, (eid, *edited.values()))
        except asyncpg.UniqueViolationError as exc:
            raise scoped.catalog.unique_error(exc, eid, edited) from exc
        if not rows:
            raise scoped.gone(eid, ": a before_update_entity hook deleted it, nothing to update")
        after = entity_of(kind, rows[0])
        return EntityEvent("after_update_entity", etype, eid, edited.readonly(), after, tx)

    before = EntityEvent("before_update_entity", etype, eid, edited, entity, tx)
    return await act(scoped, before, write)
