"""Savepoints of a transaction scope, and the journal that undoes what one did.

While a savepoint is open, the scope's ``_journal`` is that savepoint's list, and the
scheduling calls (``add``, ``accumulate``, ``mark_added``, ``mark_deleted``) append an entry
to it for each change they make; with no savepoint open it is ``None`` and they record
nothing. Rolling the savepoint back undoes the entries newest first; releasing it hands them
to the enclosing savepoint, which may still roll back.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, final

from ._exceptions import TransactionStateError
from ._operations import Operation
from ._shield import quietly, uncancellable

if TYPE_CHECKING:
    from ._transaction import Transaction

__all__ = ["ACCOP", "ADDED", "DELETED", "DOOM", "OP", "UNREPLACE", "VALUE", "Savepoint"]

logger: Final = logging.getLogger("hookbus")

# Kinds of savepoint journal entries: what to undo when a savepoint rolls back.
OP: Final = 0  # (OP, op): an operation scheduled
UNREPLACE: Final = 1  # (UNREPLACE, old_op, index): a SingleLastOperation replaced
ACCOP: Final = 2  # (ACCOP, key): an accumulating operation created
VALUE: Final = 3  # (VALUE, key, value): a value accumulated
ADDED: Final = 4  # (ADDED, eid)
DELETED: Final = 5  # (DELETED, eid)
DOOM: Final = 6  # (DOOM,): the scope doomed


@final
class Savepoint:
    """A savepoint of a transaction scope; get it from ``tx.savepoint()``.

    Leaving the block normally releases it: what it did stays. Leaving it with an exception
    rolls it back: the operations it scheduled get ``rollback`` then and there and are
    dropped, values it accumulated leave their containers, entities it marked are forgotten;
    the exception propagates. Savepoints nest.
    """

    __slots__ = ("_name", "_tx")

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx
        self._name: str | None = None

    async def __aenter__(self) -> Savepoint:
        tx = self._tx
        if not tx._schedulable:
            raise tx._refused("set a savepoint")
        if self._name is not None:
            raise TransactionStateError("a savepoint is entered once")
        name = _push_savepoint(tx)
        try:
            await tx._backend.savepoint(name)
        except BaseException:
            _pop_savepoint(tx)
            raise
        self._name = name
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tx = self._tx
        name = self._name
        assert name is not None
        journal = _pop_savepoint(tx)
        if not tx._schedulable:
            return  # the whole scope rolled back meanwhile: nothing left to release or undo
        if exc is None:
            try:
                await tx._backend.release(name)
            except BaseException:
                # RELEASE refused (a SQL error was swallowed in the block, or the session is
                # gone): what the block scheduled must not outlive it.
                await uncancellable(_undo_savepoint, tx, name, journal)
                raise
            if tx._journal is not None:
                tx._journal.extend(journal)
        else:
            await uncancellable(_undo_savepoint, tx, name, journal)


def _push_savepoint(tx: Transaction) -> str:
    """Open a journal for a new savepoint of ``tx``; return the savepoint's name."""
    tx._savepoints += 1
    journal: list[tuple[Any, ...]] = []
    tx._journals.append(journal)
    tx._journal = journal
    return f"hookbus_sp_{tx._savepoints}"


def _pop_savepoint(tx: Transaction) -> list[tuple[Any, ...]]:
    """Close the newest journal of ``tx`` and return it; the enclosing one records again."""
    journal = tx._journals.pop()
    tx._journal = tx._journals[-1] if tx._journals else None
    return journal


async def _undo_savepoint(tx: Transaction, name: str, journal: list[tuple[Any, ...]]) -> None:
    """ROLLBACK TO SAVEPOINT ``name``, undo ``journal``, then roll its operations back."""
    try:
        await tx._backend.rollback_to(name)
    except Exception:
        logger.warning("ROLLBACK TO SAVEPOINT %s failed", name, exc_info=True)
    dropped_keys = {entry[1] for entry in journal if entry[0] == ACCOP}
    dropped: list[Operation] = []
    for entry in reversed(journal):
        kind = entry[0]
        if kind == OP:
            _unschedule(tx, entry[1])
            dropped.append(entry[1])
        elif kind == UNREPLACE:
            tx._last.insert(entry[2], entry[1])
        elif kind == ACCOP:
            del tx._accumulated[entry[1]]
        elif kind == VALUE:
            if entry[1] not in dropped_keys:
                _unaccumulate(tx, entry[1], entry[2])
        elif kind == ADDED:
            tx._added.discard(entry[1])
        elif kind == DELETED:
            tx._deleted.discard(entry[1])
        else:
            tx._doom = None
    for op in reversed(dropped):
        await quietly(op.rollback, op)


def _unschedule(tx: Transaction, op: Operation) -> None:
    for ops in (tx._ops, tx._late, tx._last):
        for index, candidate in enumerate(ops):
            if candidate is op:
                del ops[index]
                if ops is tx._last and index < tx._last_cursor:
                    tx._last_cursor -= 1
                return


def _unaccumulate(tx: Transaction, key: Hashable, value: Any) -> None:
    op, _, is_set, _ = tx._accumulated[key]
    values = op.values
    if is_set:
        values.discard(value)
    elif values and values[-1] == value:
        values.pop()
    else:
        del values[len(values) - 1 - values[::-1].index(value)]
