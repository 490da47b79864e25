"""The bookkeeping of one transaction scope: its queues, accumulations, marks, doom and undo log.

A ``Ledger`` is the one owner of what a scope records between BEGIN and COMMIT: the
operations in their three queues (ordinary, late, single-last) and which of them ran their
precommit, the accumulations (``tx.accumulate``), the entities marked added or deleted, the
error that doomed the scope, and the undo log of the open savepoints. The scope
(``Transaction``) and its savepoints change it only through its methods.

The undo log is a list of typed entries (``Undo``, a tagged union of frozen structs), kept only
while a savepoint is open: ``mark_savepoint()`` returns a ``Mark`` of the log's position;
``release(mark)`` keeps what was done since (an enclosing savepoint may still undo it);
``undo_to(mark)`` undoes it, newest first, and returns the operations to call ``rollback`` on.
Outside any savepoint nothing is logged, so the hot calls cost one test of ``None``.

The ledger does not know the scope's state: the scope hands out its scheduling methods
(``add``, ``accumulate``, ``mark_added``, ``mark_deleted``) only while it is open.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from collections.abc import Set as AbstractSet
from itertools import islice
from typing import Any, Final, TypeAlias, final

import msgspec

from ._exceptions import TransactionStateError
from ._operations import LATE, NORMAL, Operation

__all__ = ["Ledger", "Mark", "Undo"]


# -- the undo log: what to undo when a savepoint rolls back -----------------------------------


class Scheduled(msgspec.Struct, frozen=True, tag=True):
    """An operation was scheduled."""

    op: Operation


class Replaced(msgspec.Struct, frozen=True, tag=True):
    """A pending ``SingleLastOperation`` was replaced; it stood at ``index``."""

    op: Operation
    index: int


class Created(msgspec.Struct, frozen=True, tag=True):
    """The accumulating operation ``op`` was created for ``key``."""

    key: Any
    op: Operation


class AddedValue(msgspec.Struct, frozen=True, tag=True):
    """``value`` was added to the set-like ``values`` of ``op``."""

    op: Operation
    value: Any


class AppendedValue(msgspec.Struct, frozen=True, tag=True):
    """``value`` was appended to the list-like ``values`` of ``op``."""

    op: Operation
    value: Any


class MarkedAdded(msgspec.Struct, frozen=True, tag=True):
    """The entity ``eid`` was marked added."""

    eid: Any


class MarkedDeleted(msgspec.Struct, frozen=True, tag=True):
    """The entity ``eid`` was marked deleted."""

    eid: Any


class UnmarkedDeleted(msgspec.Struct, frozen=True, tag=True):
    """The entity ``eid`` was unmarked deleted (its delete was cancelled)."""

    eid: Any


class Doomed(msgspec.Struct, frozen=True, tag=True):
    """The scope was doomed."""


Undo: TypeAlias = (
    Scheduled
    | Replaced
    | Created
    | AddedValue
    | AppendedValue
    | MarkedAdded
    | MarkedDeleted
    | UnmarkedDeleted
    | Doomed
)


@final
class Mark(msgspec.Struct, frozen=True):
    """Where a savepoint began: its number in the scope, its depth and the undo log's length."""

    number: int
    depth: int
    position: int

    @property
    def name(self) -> str:
        """The savepoint's SQL name: a plain identifier made by hookbus, never user input."""
        return f"hookbus_sp_{self.number}"


# (the factory, the container's add or append, the operation, whether it is set-like): the
# hot path unpacks it whole (one instruction) rather than subscripting it field by field.
_Accumulation: TypeAlias = tuple[Callable[[], Operation], Callable[[Any], object], Operation, bool]
_NOT_ACCUMULATED: Final = object()
# The key of ``Ledger._keys`` that says the scope is doomed (never an id: ids are positive).
_DOOMED: Final = -1


@final
class Ledger:
    """The bookkeeping of one transaction scope (see the module docstring)."""

    __slots__ = (
        "_accumulated",
        "_added",
        "_at_last",
        "_closed",
        "_deleted",
        "_depth",
        "_doom",
        "_keys",
        "_last",
        "_late",
        "_normal",
        "_ran",
        "_savepoints",
        "_undo",
        "_unlogged",
        "added",
        "deleted",
    )

    def __init__(self) -> None:
        self._normal: list[Operation] = []
        self._late: list[Operation] = []
        self._last: list[Operation] = []
        # The precommit phase's cursor in the single-last queue: what is before it ran.
        self._at_last = 0
        self._ran: list[Operation] = []
        self._accumulated: dict[Hashable, _Accumulation] = {}
        # key -> (factory, add), for the open accumulations whose values need no logging:
        # filled outside savepoints, emptied when one opens (accumulate's short path is one
        # lookup, no test of the undo log) and when the key's accumulation closes.
        self._unlogged: dict[Hashable, tuple[Callable[[], Operation], Callable[[Any], object]]] = {}
        # id(op) -> key, for the accumulating operations whose precommit has not started, and
        # _DOOMED -> True while the scope is doomed: the precommit loop tests this one dict
        # between operations, and looks closer only when it is not empty.
        # key -> factory, for the keys whose operation's precommit has started.
        self._keys: dict[int, Hashable] = {}
        self._closed: dict[Hashable, Callable[[], Operation]] = {}
        self._added: set[Hashable] = set()
        self._deleted: set[Hashable] = set()
        # Read-only views for the readers (`eid in ledger.added` is the cheapest test, and
        # added_in_transaction() runs in hooks on every event); only the ledger changes them.
        #: The entities marked added.
        self.added: AbstractSet[Hashable] = self._added
        #: The entities marked deleted.
        self.deleted: AbstractSet[Hashable] = self._deleted
        self._doom: BaseException | None = None
        # The undo log: None while no savepoint is open, so that nothing is logged then.
        self._undo: list[Undo] | None = None
        self._depth = 0
        self._savepoints = 0

    # -- operations --------------------------------------------------------------------------

    def operations(self) -> tuple[Operation, ...]:
        """The scheduled operations, in the order their precommit runs."""
        return (*self._normal, *self._late, *self._last)

    def ran(self) -> tuple[Operation, ...]:
        """The operations whose precommit ran (or is running), in the order they ran."""
        return tuple(self._ran)

    def add(self, op: Operation) -> None:
        """Queue ``op`` by its kind. A ``SingleLastOperation`` replaces a pending one of its
        class; one that ran (or is running) keeps its place and its callbacks.

        ``tx.add`` is this method while the scope is open (``Transaction.add`` documents it).
        """
        # One lookup is both the type check and the phase: only Operation's classes declare
        # _hookbus_phase (an Operation class itself, whose type is `type`, is refused too);
        # isinstance() first cost 120 instructions more a call (callgrind).
        try:
            phase = type(op)._hookbus_phase
        except AttributeError:
            raise TypeError(f"tx.add() takes an Operation instance, not {op!r}") from None
        if not phase and self._undo is None:  # NORMAL (0), outside savepoints: the common case
            self._normal.append(op)
            return
        if phase == NORMAL:
            self._normal.append(op)
        elif phase == LATE:
            self._late.append(op)
        else:
            last = self._last
            cls = type(op)
            for index in range(self._at_last, len(last)):
                if type(last[index]) is cls:
                    old = last.pop(index)
                    if self._undo is not None:
                        self._undo.append(Replaced(old, index))
                    break
            last.append(op)
        if self._undo is not None:
            self._undo.append(Scheduled(op))

    async def precommit(self) -> None:
        """Run the precommit of each operation due, in order, until all have run.

        Ordinary operations first (those scheduled meanwhile included), then the late ones,
        then the single-last ones; each is recorded as run before its precommit starts. An
        accumulating operation stops accumulating then: values for its key go to a new
        operation from the same factory. It stops early once the scope is doomed, and lets
        what a precommit raises propagate (the scope runs the rollback path).
        """
        # Once per operation at every commit: kept flat, on locals, awaiting directly (a
        # generator the scope iterates cost 90 ns more an operation). The ordinary queue, where
        # nearly every operation stands, is iterated (a list's iterator sees what is appended
        # meanwhile) and its ran operations recorded once per run, not one by one.
        normal, late, last, ran, keys = self._normal, self._late, self._last, self._ran, self._keys
        at_normal = at_late = 0
        while True:
            if at_normal < len(normal):
                start = at_normal
                try:
                    for op in normal if not start else islice(normal, start, None):
                        if keys and self._closing(op):
                            return  # doomed: op does not run (the scope now rolls back)
                        at_normal += 1
                        await op.precommit()
                finally:
                    ran.extend(normal[start:at_normal])
                continue
            if at_late < len(late):
                op = late[at_late]
                at_late += 1
            elif self._at_last < len(last):
                op = last[self._at_last]
                self._at_last += 1  # add() replaces only what stands past it
            else:
                return
            if keys and self._closing(op):
                return
            ran.append(op)
            await op.precommit()

    def _closing(self, op: Operation) -> bool:
        """Before ``op``'s precommit: close its accumulation, if it has one; True (and ``op``
        does not run) if the scope is doomed. Called only while ``_keys`` is not empty."""
        keys = self._keys
        if _DOOMED in keys:
            return True
        key = keys.pop(id(op), _NOT_ACCUMULATED)
        if key is not _NOT_ACCUMULATED:
            self._closed[key] = self._accumulated.pop(key)[0]
            self._unlogged.pop(key, None)
        return False

    # -- accumulations -----------------------------------------------------------------------

    def accumulate(
        self,
        key: Hashable,
        value: Any,
        factory: Callable[[], Operation],
        container: Callable[[], Any] = set,
    ) -> None:
        """Add ``value`` to the operation accumulating under ``key``; create it if needed.

        ``tx.accumulate`` is this method while the scope is open (``Transaction.accumulate``
        documents it).
        """
        try:  # a subscript is cheaper than .get() on this hot path, and hits are the rule
            made_by, add = self._unlogged[key]
        except KeyError:
            self._accumulate(key, value, factory, container)
            return
        if made_by is not factory and made_by != factory:
            raise TypeError(f"key {key!r} accumulates into {_name(made_by)}, not {_name(factory)}")
        add(value)

    def _accumulate(
        self,
        key: Hashable,
        value: Any,
        factory: Callable[[], Operation],
        container: Callable[[], Any],
    ) -> None:
        # accumulate() when its key is not in _unlogged: a new key, or a savepoint is open.
        try:
            made_by, add, op, is_set = self._accumulated[key]
        except KeyError:
            made_by, add, op, is_set = self._open_accumulation(key, factory, container)
        if made_by is not factory and made_by != factory:
            raise TypeError(f"key {key!r} accumulates into {_name(made_by)}, not {_name(factory)}")
        undo = self._undo
        if undo is None:
            self._unlogged[key] = (made_by, add)  # the next values take the short path
            add(value)
        elif is_set:
            if value not in op.values:
                add(value)
                undo.append(AddedValue(op, value))
        else:
            add(value)
            undo.append(AppendedValue(op, value))

    def accumulate_many(
        self,
        key: Hashable,
        values: Iterable[Any],
        factory: Callable[[], Operation],
        container: Callable[[], Any] = set,
    ) -> None:
        """``accumulate`` for each of ``values``, in one call: outside savepoints the
        container takes them all at once (``update`` or ``extend``, at C speed)."""
        if self._undo is not None:  # every value is logged: one at a time
            for value in values:
                self._accumulate(key, value, factory, container)
            return
        try:
            made_by, add, op, is_set = self._accumulated[key]
        except KeyError:
            made_by, add, op, is_set = self._open_accumulation(key, factory, container)
        if made_by is not factory and made_by != factory:
            raise TypeError(f"key {key!r} accumulates into {_name(made_by)}, not {_name(factory)}")
        bulk = getattr(op.values, "update" if is_set else "extend", None)
        if bulk is not None:
            bulk(values)
        else:
            for value in values:
                add(value)

    def _open_accumulation(
        self, key: Hashable, factory: Callable[[], Operation], container: Callable[[], Any]
    ) -> _Accumulation:
        closed = self._closed.get(key)
        if closed is not None and closed is not factory and closed != factory:
            raise TypeError(f"key {key!r} accumulates into {_name(closed)}, not {_name(factory)}")
        if not callable(factory):
            raise TypeError(
                f"accumulate() takes an Operation factory (a class or a callable of no "
                f"argument returning an Operation), not {factory!r}"
            )
        values = container()
        adder = getattr(values, "add", None)
        is_set = adder is not None
        if adder is None and not callable(getattr(values, "append", None)):
            raise TypeError(
                f"accumulate() needs a container with add() or append(), "
                f"not {type(values).__qualname__}"
            )
        op = factory()
        if not isinstance(op, Operation):
            raise TypeError(
                f"accumulate(): the factory {factory!r} returned {op!r}, not an Operation"
            )
        op.values = values
        self.add(op)
        entry = self._accumulated[key] = (factory, adder or values.append, op, is_set)
        self._keys[id(op)] = key
        if self._undo is not None:
            self._undo.append(Created(key, op))
        return entry

    # -- marks and doom ----------------------------------------------------------------------

    def mark_added(self, eid: Hashable) -> None:
        """Record that the entity ``eid`` was added."""
        if self._undo is None:
            self._added.add(eid)  # nothing to log: no test first (one call on every insert)
        elif eid not in self._added:
            self._added.add(eid)
            self._undo.append(MarkedAdded(eid))

    # mark_added's twin on purpose: a helper shared by the two adds a call to each, which
    # measured +20 ns a call (+40%) on the hot path of every insert.
    def mark_deleted(self, eid: Hashable) -> None:
        """Record that the entity ``eid`` was deleted."""
        if self._undo is None:
            self._deleted.add(eid)
        elif eid not in self._deleted:
            self._deleted.add(eid)
            self._undo.append(MarkedDeleted(eid))

    def unmark_deleted(self, eid: Hashable) -> None:
        """Forget that the entity ``eid`` was deleted (its delete was cancelled)."""
        if eid in self._deleted:
            self._deleted.discard(eid)
            if self._undo is not None:
                self._undo.append(UnmarkedDeleted(eid))

    def doom(self, error: BaseException) -> None:
        """Record ``error`` as what dooms the scope, unless it is doomed already."""
        if self._doom is None:
            self._doom = error
            self._keys[_DOOMED] = True
            if self._undo is not None:
                self._undo.append(Doomed())

    @property
    def doomed(self) -> BaseException | None:
        """The error that doomed the scope, or None."""
        return self._doom

    # -- savepoints --------------------------------------------------------------------------

    def mark_savepoint(self) -> Mark:
        """Start logging for a new innermost savepoint; return where it began."""
        if self._undo is None:
            self._undo = []
            self._unlogged.clear()  # from now on every value is logged
        self._savepoints += 1
        self._depth += 1
        return Mark(self._savepoints, self._depth, len(self._undo))

    def release(self, mark: Mark) -> None:
        """Keep what was done since ``mark``: it now belongs to the enclosing savepoint."""
        self._end(mark)

    def undo_to(self, mark: Mark) -> list[Operation]:
        """Undo what was done since ``mark``, newest first.

        Return the operations scheduled since, in scheduling order: they are dropped and
        get ``rollback``.
        """
        undo = self._undo
        assert undo is not None
        self._end(mark)
        entries = undo[mark.position :]
        del undo[mark.position :]
        dropped = [entry.op for entry in entries if type(entry) is Scheduled]
        dropped_ids = {id(op) for op in dropped}
        for entry in reversed(entries):
            match entry:
                case Scheduled(op):
                    self._unschedule(op)
                case Replaced(op, index):
                    self._last.insert(index, op)
                case Created(key, op):
                    self._accumulated.pop(key, None)
                    self._unlogged.pop(key, None)
                    self._keys.pop(id(op), None)
                case AddedValue(op, value):
                    if id(op) not in dropped_ids:
                        op.values.discard(value)
                case AppendedValue(op, value):
                    if id(op) not in dropped_ids:
                        values = op.values
                        if values[-1] == value:  # undone newest first: the usual case
                            values.pop()
                        else:
                            del values[len(values) - 1 - values[::-1].index(value)]
                case MarkedAdded(eid):
                    self._added.discard(eid)
                case MarkedDeleted(eid):
                    self._deleted.discard(eid)
                case UnmarkedDeleted(eid):
                    self._deleted.add(eid)
                case Doomed():
                    self._doom = None
                    del self._keys[_DOOMED]
        return dropped

    def require_innermost(self, mark: Mark) -> None:
        """Refuse to end the savepoint of ``mark`` while one inside it is still open."""
        if mark.depth != self._depth:
            raise TransactionStateError(
                f"savepoint {mark.name} ended while a savepoint inside it is still open: "
                "savepoints end in the reverse order they began"
            )

    def _end(self, mark: Mark) -> None:
        self.require_innermost(mark)
        self._depth -= 1
        if self._depth == 0:
            self._undo = None

    def _unschedule(self, op: Operation) -> None:
        # An operation scheduled inside a savepoint has not run when the savepoint ends (it
        # ends inside the block or the precommit that opened it): it stands past the cursor.
        for queue in (self._normal, self._late, self._last):
            for index in range(len(queue) - 1, -1, -1):
                if queue[index] is op:
                    del queue[index]
                    return


def _name(factory: object) -> str:
    return str(getattr(factory, "__qualname__", None) or repr(factory))
