"""Adding entities: one at a time (one statement), or many (COPY), with their events.

An eid is known before the ``before_add_entity`` hooks run (they get it, as in CubicWeb):
single inserts take theirs from a block fetched ahead (one round trip in ``BLOCK``), kept
per database (``Database.free``). Value types are checked before the hooks; the values as
the hooks left them are checked again, required attributes included (a hook may compute
them), before the write.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import repeat
from operator import itemgetter
from typing import Any, Final

import asyncpg

from hookbus import Edited, EntityEvent, ValidationError

from ._action import act
from ._entity import Entity, entity_of
from ._mandatory import note_added
from ._schema import ENTITIES_TABLE, EntityType
from ._scoped import Copy, ScopedStore, Stopped, stoppable
from ._statements import ALLOCATE_EIDS

__all__ = ["BLOCK", "insert", "insert_batch", "take_eids"]

BLOCK: Final = 64  # eids fetched at once for single inserts: one round trip in 64
Progress = Callable[[int, int], object]


@stoppable(None)
async def insert(scoped: ScopedStore, kind: EntityType, edited: Edited) -> int | None:
    """Insert one entity whose values were checked; its eid, or ``None`` if cancelled."""
    free = scoped.db.free
    if free:
        eid = free.pop()
    else:
        # Other scopes may take from the free list while this one waits: the eid comes
        # from the block fetched, and only the rest of the block goes to the free list.
        fresh = await _allocate(scoped, BLOCK)
        eid = fresh.pop()
        free[:0] = fresh
    tx, etype = scoped.tx, kind.name

    async def write() -> EntityEvent | None:
        recheck(kind, edited, eid, "before_add_entity", adding=True)
        sql = scoped.catalog.entity_sql[etype].insert(tuple(edited))
        try:
            rows = await scoped.run(sql, (eid, etype, *edited.values()))
        except asyncpg.UniqueViolationError as exc:
            raise scoped.catalog.unique_error(exc, eid, edited) from exc
        record = rows[0]
        if record[-2] != scoped.db.sequence:
            raise scoped.moved()
        if scoped.xid is None:
            scoped.wrote(record[-1])
        added(scoped, kind, eid)
        entity = entity_of(kind, record[:-2])
        return EntityEvent("after_add_entity", etype, eid, edited.readonly(), entity, tx)

    before = EntityEvent("before_add_entity", etype, eid, edited, None, tx)
    return eid if await act(scoped, before, write) else None


async def take_eids(scoped: ScopedStore, n: int) -> list[int] | None:
    """``n`` eids for ``insert_many``, the smallest first; ``None`` if a hook refused.

    The connection is asked which data it works on first (one catalog read: little
    beside a COPY), so that the eids come from the sequence its search_path resolves now.
    """
    scoped.db = await scoped.databases.ask(scoped.conn)
    # Take what the free list holds now, without awaiting in between (other scopes take
    # from it too), then fetch the rest: those fresh eids are this call's alone.
    free = scoped.db.free
    taken = min(n, len(free))
    eids = free[len(free) - taken :][::-1]
    del free[len(free) - taken :]
    if taken < n:
        try:
            fresh = await _allocate(scoped, n - taken)
        except Stopped:
            free += reversed(eids)  # unused: back to the free list
            return None
        eids += reversed(fresh)
    return eids


async def insert_batch(
    scoped: ScopedStore,
    kind: EntityType,
    eids: list[int],
    pending: list[Edited] | None,
    *,
    values: list[dict[str, Any]] | None = None,
    rows: list[Any] | None = None,
) -> list[int | None]:
    """Insert a batch (eids given) with COPY: every before hook, the COPYs, every after hook.

    Returns the eid of each, ``None`` for an entity a hook cancelled. ``pending`` holds the
    entities as the hooks get them. ``values``: the rows were checked whole, required
    attributes included (``insert_many`` does that where no before_add_entity hook can run),
    and these are their values, every attribute in column order; then, with no such hook,
    they are written as they are, and ``pending`` may be ``None`` where no after_add_entity
    hook was registered: the entities are built from ``rows`` only if a hook registered
    since needs them.
    """
    tx, etype, emit = scoped.tx, kind.name, scoped.emit
    # With no before_add_entity hook to change the values (checked by insert_many), only the
    # required attributes may be left to check, not every value again; with no after hook,
    # no after event is built.
    hooked = bool(scoped.hooks_for("before_add_entity", etype))
    told = bool(scoped.hooks_for("after_add_entity", etype))
    if pending is None and (hooked or told):
        assert rows is not None
        pending = [Edited(kind.with_defaults(dict(row))) for row in rows]
    try:
        columns = kind.columns
        if hooked:
            assert pending is not None
            result: list[int | None] = []
            records: list[tuple[Any, ...]] = []
            written: list[tuple[int, Edited]] = []
            for eid, edited in zip(eids, pending, strict=True):
                event = EntityEvent("before_add_entity", etype, eid, edited, None, tx)
                if await emit("before_add_entity", event) is not None:
                    result.append(None)
                    continue
                recheck(kind, edited, eid, "before_add_entity", adding=True)
                records.append((eid, *map(edited.get, columns)))
                written.append((eid, edited))
                result.append(eid)
            if not records:
                return result
        else:  # no hook can cancel a row: every row is written, built at C speed
            if values is None:
                assert pending is not None
                for eid, edited in zip(eids, pending, strict=True):
                    _check_required(kind, edited, eid)
                records = [
                    (eid, *map(edited.get, columns))
                    for eid, edited in zip(eids, pending, strict=True)
                ]
            else:
                records = [(eid, *row.values()) for eid, row in zip(eids, values, strict=True)]
            written = list(zip(eids, pending, strict=True)) if told and pending else []
            result = list(eids)
        statements = scoped.catalog.entity_sql[etype]
        copies = (
            Copy(
                statements.copy_entities,
                ENTITIES_TABLE,
                list(zip(map(itemgetter(0), records), repeat(etype))),
                ("eid", "etype"),
            ),
            Copy(statements.copy, kind.table, records, ("eid", *columns)),
        )
        await scoped.announce(copies)
        try:
            for copy in copies:
                await scoped.run_announced(copy)
        except asyncpg.UniqueViolationError as exc:
            raise scoped.catalog.unique_error(exc, None, None) from exc
        if not told:  # each row marked added, and nothing else to do for it
            mark, sides = tx.mark_added, scoped.catalog.mandatory_of[etype]
            added_eids = list(map(itemgetter(0), records))
            for eid in added_eids:
                mark(eid)
            scoped.db.know_many(added_eids, kind)
            if sides:
                for eid in added_eids:
                    note_added(scoped, sides, eid)
            return result
        for eid, edited in written:
            added(scoped, kind, eid)
            entity = Entity(etype, eid, {c: edited.get(c) for c in columns})
            readonly = edited.readonly()
            event = EntityEvent("after_add_entity", etype, eid, readonly, entity, tx)
            await emit("after_add_entity", event)
    except Stopped:
        return [None] * len(eids)
    except Exception as exc:
        scoped.doom(exc)
        raise
    return result


def added(scoped: ScopedStore, kind: EntityType, eid: int) -> None:
    """Mark ``eid`` added, remember its type, note its "at least one" relations."""
    scoped.tx.mark_added(eid)
    scoped.db.know(eid, kind)
    sides = scoped.catalog.mandatory_of[kind.name]
    if sides:
        note_added(scoped, sides, eid)


def recheck(kind: EntityType, edited: Edited, eid: int, event: str, *, adding: bool) -> None:
    """Check ``edited`` as the before-hooks left it, required attributes included."""
    try:
        kind.check(edited, eid, adding=adding)
    except (ValidationError, LookupError) as exc:
        exc.add_note(f"as the {event} hooks left it")
        raise


def _check_required(kind: EntityType, edited: Edited, eid: int) -> None:
    """The part of ``recheck`` left for values already checked that no hook changed."""
    for attr in kind.required:
        if edited.get(attr) is None:
            missing = sorted(a for a in kind.required if edited.get(a) is None)
            exc = ValidationError(eid, {a: f"{kind.name}.{a} is required" for a in missing})
            exc.add_note("as the before_add_entity hooks left it")
            raise exc


async def _allocate(scoped: ScopedStore, n: int) -> list[int]:
    """``n`` fresh eids, descending (``Stopped`` if a before_query hook refused).

    They are the caller's alone: it puts those it does not use on the free list itself,
    with no await in between, so that no other scope can take them meanwhile.
    """
    rows = await scoped.run(ALLOCATE_EIDS, (n,))
    return sorted(rows[0][0], reverse=True)
