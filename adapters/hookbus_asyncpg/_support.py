"""What the store keeps between calls: per database, per transaction scope, per failure.

* ``Database``: eids handed out by the sequence but not yet used, and the entity type of
  eids seen. Both are facts of one database, so a store used on two keeps them apart. An
  eid's type never changes and eids are never reused, so a cached type is never wrong;
  whether the entity still exists is always asked of the table itself.
* ``Failed``: the operation that makes a scope fail at commit when a store action failed
  inside it and the error was caught; a half-done action is never committed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable
from typing import Any, Final, final

from hookbus import Operation, Transaction, TransactionStateError

from ._schema import EntityType

__all__ = ["Database", "Failed", "database_key", "fail_at_commit"]

# The type cache is dropped whole past this many eids: simple, and a miss costs one lookup.
_CACHE_LIMIT: Final = 1 << 20


@final
class Database:
    """Per database: unused eids (``free``, descending) and known entity types by eid."""

    __slots__ = ("free", "kinds")

    def __init__(self) -> None:
        self.free: list[int] = []
        self.kinds: dict[int, EntityType] = {}

    def know(self, eid: int, kind: EntityType) -> None:
        """Remember that ``eid`` is a ``kind``."""
        kinds = self.kinds
        if len(kinds) >= _CACHE_LIMIT:
            kinds.clear()
        kinds[eid] = kind


def database_key(conn: Any) -> Hashable:
    """Which database ``conn`` talks to: its server address and database name.

    asyncpg exposes both only as private attributes (through a pool's proxy too); without
    them each connection counts as a database of its own, which is safe, merely wasteful.
    """
    try:
        return (conn._addr, conn._params.database)
    except AttributeError:
        return id(conn)


@final
class Failed(Operation):
    """Raises, at precommit, the error a store action raised inside the scope."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def precommit(self) -> None:
        self.error.add_note(
            "raised again at commit: a store action failed with it inside the transaction "
            "scope and the error was caught; a half-done action is never committed (catch it "
            "outside `async with tx.savepoint():` to go on without it)"
        )
        raise self.error


def fail_at_commit(tx: Transaction, error: Exception) -> None:
    """Make ``tx`` fail at commit with ``error``, once however many actions it went through."""
    for op in tx.operations:
        if type(op) is Failed and op.error is error:
            return
    with contextlib.suppress(TransactionStateError):  # a scope already over commits nothing
        tx.add(Failed(error))
