"""Deleting an entity: its relations first, each with its events, then its row.

After ``before_delete_entity``, one ``SELECT`` per relation type finds the entity's
relations (either role) and ``before_delete_relation`` runs for each (a ``Break`` there
cancels the whole delete: nothing is written); then one ``DELETE`` per relation type,
followed by ``after_delete_relation`` for each row it removed; then the entity's ``DELETE``
and ``after_delete_entity``. The entity is ``deleted_in_transaction`` from the start.

A row a ``before_*`` hook already deleted (by deleting the entity itself) is not deleted
twice: the delete returns ``False`` and fires no after-hook, as a cancelled one does; the
hook's own delete fired them. A partner left without a relation it must have at least one
of (``1``, ``+``) fails the transaction at precommit, unless it is deleted too.
"""

from __future__ import annotations

from typing import Any

from hookbus import Edited, EntityEvent, RelationEvent

from ._action import act
from ._entity import entity_of
from ._mandatory import note_unlinked
from ._scoped import ScopedStore, Statement, stoppable
from ._statements import DELETE_ENTITY

__all__ = ["delete"]


@stoppable(False)
async def delete(scoped: ScopedStore, eid: int) -> bool:
    """Delete ``eid`` and its relations; ``False`` if cancelled or already gone."""
    kind = await scoped.kind_of(eid)
    catalog = scoped.catalog
    old = await scoped.run(catalog.entity_sql[kind.name].select_for_delete, (eid,))
    if not old:
        raise scoped.gone(eid)
    tx, emit = scoped.tx, scoped.emit
    scoped.deleted_here.discard(eid)  # the row is there: an earlier delete was undone

    async def write() -> EntityEvent | None:
        found: list[tuple[str, list[Any]]] = []  # (rtype, its rows), relation types with rows
        for rtype in catalog.relations_of[kind.name]:
            rows = await scoped.run(catalog.relation_sql[rtype].touching, (eid,))
            if rows:
                found.append((rtype, rows))
        for rtype, rows in found:
            for eidfrom, eidto in rows:
                unlinked = RelationEvent("before_delete_relation", rtype, eidfrom, eidto, tx)
                if await emit("before_delete_relation", unlinked) is not None:
                    return None
        writes: list[Statement] = [
            (catalog.relation_sql[rtype].delete_touching, (eid,)) for rtype, _ in found
        ]
        writes.append((DELETE_ENTITY, (eid,)))
        await scoped.announce(writes)
        for (rtype, _), statement in zip(found, writes[:-1], strict=True):
            removed = await scoped.run_announced(statement)
            note_unlinked(scoped, catalog.relation(rtype), removed)
            for eidfrom, eidto in removed:
                unlinked = RelationEvent("after_delete_relation", rtype, eidfrom, eidto, tx)
                await emit("after_delete_relation", unlinked)
        if not await scoped.run_announced(writes[-1]):
            return None  # a before hook deleted it already (and fired the after-hooks)
        scoped.deleted_here.add(eid)
        return EntityEvent("after_delete_entity", kind.name, eid, edited.readonly(), entity, tx)

    entity, edited = entity_of(kind, old[0]), Edited()
    before = EntityEvent("before_delete_entity", kind.name, eid, edited, entity, tx)
    return await act(scoped, before, write, deleting=eid)
