"""Adding and deleting relations, with their events.

"At most one" sides (``1``, ``?``) are UNIQUE in the table: a second partner is a
``ValidationError`` as the relation is added. "At least one" sides (``1``, ``+``) are
checked before COMMIT (``_mandatory``).
"""

from __future__ import annotations

import asyncpg

from hookbus import RelationEvent

from ._action import act
from ._mandatory import note_unlinked
from ._schema import RelationType
from ._scoped import ScopedStore, stoppable

__all__ = ["add_relation", "delete_relation"]


@stoppable(False)
async def add_relation(
    scoped: ScopedStore, relation: RelationType, eidfrom: int, eidto: int
) -> bool:
    """Relate ``eidfrom`` to ``eidto``; ``False`` if a hook cancelled it."""
    await scoped.fit(relation, eidfrom, eidto)
    rtype, tx = relation.name, scoped.tx

    async def write() -> RelationEvent | None:
        try:
            rows = await scoped.run(scoped.catalog.relation_sql[rtype].insert, (eidfrom, eidto))
        except asyncpg.UniqueViolationError as exc:
            raise scoped.catalog.unique_error(exc, eidfrom, None, eidto) from exc
        except asyncpg.ForeignKeyViolationError as exc:
            raise LookupError(f"{rtype}: entity {eidfrom} or {eidto} no longer exists") from exc
        if scoped.xid is None:
            scoped.wrote(rows[0][1])
        return RelationEvent("after_add_relation", rtype, eidfrom, eidto, tx)

    before = RelationEvent("before_add_relation", rtype, eidfrom, eidto, tx)
    return await act(scoped, before, write)


@stoppable(False)
async def delete_relation(
    scoped: ScopedStore, relation: RelationType, eidfrom: int, eidto: int
) -> bool:
    """Remove the relation; ``False`` if cancelled, ``LookupError`` if there is none.

    ``False`` too when a before hook removed it itself (its own events fired then).
    """
    await scoped.fit(relation, eidfrom, eidto)
    rtype, tx = relation.name, scoped.tx
    statements = scoped.catalog.relation_sql[rtype]
    found = await scoped.run(statements.check, (eidfrom, eidto))
    if not found:
        raise LookupError(f"no relation {eidfrom} {rtype} {eidto}")

    async def write() -> RelationEvent | None:
        rows = await scoped.run(statements.delete, (eidfrom, eidto))
        if not rows:  # deleted by a before hook (which fired the events)
            return None
        note_unlinked(scoped, relation, ((eidfrom, eidto),))
        return RelationEvent("after_delete_relation", rtype, eidfrom, eidto, tx)

    before = RelationEvent("before_delete_relation", rtype, eidfrom, eidto, tx)
    return await act(scoped, before, write)
