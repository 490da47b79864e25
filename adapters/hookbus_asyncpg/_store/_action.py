"""The one shape of every write of the store, in one place.

``before_*`` hooks, then (unless one raised ``Break``) the write, whose own statements may
still be cancelled by a ``before_query`` hook, then the ``after_*`` hooks. A delete marks
its entity ``deleted_in_transaction`` before its hooks run, so that the relation hooks its
deletion fires see it (CubicWeb's ``if deleted_in_transaction(eidto): return``), and
unmarks it when cancelled. An error from a hook or a statement propagates and dooms the
scope (``tx.doom``): a half-done action is never committed, unless a savepoint around it
rolls it back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from hookbus import EntityEvent, RelationEvent

from ._scoped import ScopedStore, Stopped

__all__ = ["Payload", "act"]

Payload = EntityEvent | RelationEvent


async def act(
    scoped: ScopedStore,
    before: Payload,
    write: Callable[[], Awaitable[Payload | None]],
    *,
    deleting: Any = None,
) -> bool:
    """Run ``before``'s hooks, ``write()``, then the hooks of the payload it returns.

    ``write`` returns ``None`` when there was nothing left to write. A ``before_query`` hook
    that stops one of its statements (``Stopped``) cancels the action: the entity marked
    deleted is unmarked, and ``Stopped`` goes on to the action's runner (``stoppable``).
    Returns whether the action happened.
    """
    tx = scoped.tx
    was_marked = False
    try:
        if deleting is not None:
            was_marked = tx.deleted(deleting)
            tx.mark_deleted(deleting)
        emit = scoped.emit
        if await emit(before.event, before) is None:
            after = await write()
            if after is not None:
                await emit(after.event, after)
                return True
        _cancelled(scoped, deleting, was_marked)
        return False
    except Stopped:
        _cancelled(scoped, deleting, was_marked)
        raise
    except Exception as exc:
        scoped.doom(exc)
        raise


def _cancelled(scoped: ScopedStore, deleting: Any, was_marked: bool) -> None:
    # A delete of the same entity run by a hook meanwhile (deleted_here) did delete it: it
    # stays marked then.
    if deleting is not None and not was_marked and deleting not in scoped.deleted_here:
        scoped.unmark_deleted(deleting)
