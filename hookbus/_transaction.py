"""The transaction scope: operations, shared data and savepoints around one COMMIT.

A scope is an async context manager over a backend (``hookbus.MemoryBackend``, or the
asyncpg adapter's). While it is open, ``current_transaction()`` finds it from anywhere below
(a hook, a service function). At its end it drives the lifecycle:

1. ``precommit`` of every operation, in scheduling order; operations scheduled meanwhile run
   in the same phase, before the ``LateOperation``s, and a ``SingleLastOperation`` runs last;
2. if a precommit raises: ``revertprecommit`` (newest first) on those that ran, ROLLBACK,
   ``rollback`` on every operation, and the exception propagates;
3. COMMIT, uncancellable: if the server refuses it, ``revertprecommit`` and ``rollback``
   (no ROLLBACK is sent) and the error propagates; if the server answers ROLLBACK (an error
   was swallowed inside the scope) the same, then ``TransactionAbortedError``;
4. ``postcommit`` of every operation: errors are logged on the ``hookbus`` logger and
   counted in ``tx.postcommit_errors``, never raised;
5. an exception in the body, or ``await tx.rollback()``: ROLLBACK, then ``rollback`` on
   every operation.

A cancelled scope still completes its ROLLBACK and rollback operations; a COMMIT already
sent is awaited to its outcome and its callbacks run before the cancellation propagates.
Errors inside ``revertprecommit`` and ``rollback`` are logged, never masking the original.

>>> import asyncio, hookbus
>>> async def main() -> None:
...     async with hookbus.transaction() as tx:
...         tx.data["seen"] = True
>>> asyncio.run(main())
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Hashable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, Final, final

import anyio.lowlevel

from ._backend import Backend, CommitOutcome, MemoryBackend
from ._exceptions import CommitOutcomeUnknownError, TransactionAbortedError, TransactionStateError
from ._operations import LAST, LATE, NORMAL, Operation
from ._savepoints import ACCOP, ADDED, DELETED, DOOM, OP, UNREPLACE, VALUE, Savepoint
from ._shield import quietly, uncancellable

__all__ = [
    "Transaction",
    "TransactionState",
    "added_in_transaction",
    "current_transaction",
    "deleted_in_transaction",
    "transaction",
    "transaction_data",
]

logger: Final = logging.getLogger("hookbus")


@final
class TransactionState(enum.Enum):
    """The states of a transaction scope."""

    NEW = "new"
    ACTIVE = "active"
    PRECOMMITTING = "precommitting"
    COMMITTING = "committing"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled back"
    FAILED = "failed"


_S = TransactionState
# Every legal move of the state machine, in one place.
_MOVES: Final[dict[TransactionState, frozenset[TransactionState]]] = {
    _S.NEW: frozenset({_S.ACTIVE, _S.FAILED}),
    _S.ACTIVE: frozenset({_S.PRECOMMITTING, _S.ROLLED_BACK}),
    _S.PRECOMMITTING: frozenset({_S.COMMITTING, _S.ROLLED_BACK}),
    _S.COMMITTING: frozenset({_S.COMMITTED, _S.ROLLED_BACK, _S.FAILED}),
    _S.COMMITTED: frozenset(),
    _S.ROLLED_BACK: frozenset(),
    _S.FAILED: frozenset(),
}

_current: ContextVar[Transaction | None] = ContextVar("hookbus.transaction", default=None)


def current_transaction() -> Transaction:
    """Return the transaction scope open in this context.

    Raises ``TransactionStateError`` when there is none.
    """
    tx = _current.get()
    if tx is None:
        raise TransactionStateError(
            "no transaction scope is open here: open one with "
            "`async with hookbus.transaction():` (or an adapter's `transaction()`)"
        )
    return tx


def transaction_data() -> dict[str, Any]:
    """Return the ``data`` dict of the current transaction scope, for hooks to share."""
    return current_transaction().data


def added_in_transaction(eid: Hashable) -> bool:
    """Tell whether the entity ``eid`` was added in the current transaction scope."""
    return eid in current_transaction()._added


def deleted_in_transaction(eid: Hashable) -> bool:
    """Tell whether the entity ``eid`` was deleted in the current transaction scope."""
    return eid in current_transaction()._deleted


def transaction(backend: Backend | None = None) -> Transaction:
    """Return a transaction scope over ``backend`` (a ``MemoryBackend`` when not given).

    Use it as ``async with hookbus.transaction() as tx:``. Database adapters give their own
    ``transaction()`` that builds the backend from a connection.
    """
    return Transaction(MemoryBackend() if backend is None else backend)


class Transaction:
    """A transaction scope: operations, shared ``data``, savepoints, over one backend.

    Get one from ``hookbus.transaction()`` or an adapter, and enter it with ``async with``;
    it commits at the end of the block, or rolls back if the block raises. Scheduling
    (``add``, ``accumulate``, ``mark_added``) is refused once the scope is finished.
    """

    __slots__ = (
        "_accumulated",
        "_added",
        "_backend",
        "_deleted",
        "_doom",
        "_journal",
        "_journals",
        "_last",
        "_last_cursor",
        "_late",
        "_ops",
        "_savepoints",
        "_schedulable",
        "_state",
        "_token",
        "data",
        "postcommit_errors",
    )

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._state = TransactionState.NEW
        self._schedulable = False
        self._token: Token[Transaction | None] | None = None
        self._ops: list[Operation] = []
        self._late: list[Operation] = []
        self._last: list[Operation] = []
        self._last_cursor = 0
        self._accumulated: dict[
            Hashable, tuple[Operation, Callable[[Any], object], bool, Callable[[], Operation]]
        ] = {}
        self._added: set[Hashable] = set()
        self._deleted: set[Hashable] = set()
        self._doom: BaseException | None = None
        # Savepoint journals (see _savepoints): `_journal` is the innermost open one's, or
        # None outside any savepoint, so that scheduling outside one records nothing.
        self._journals: list[list[tuple[Any, ...]]] = []
        self._journal: list[tuple[Any, ...]] | None = None
        self._savepoints = 0
        #: Data shared by the hooks and operations of this scope.
        self.data: dict[str, Any] = {}
        #: How many postcommit operations raised (they are logged, never raised).
        self.postcommit_errors = 0

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self._state.value} at {id(self):#x}>"

    @property
    def state(self) -> TransactionState:
        """The state of the scope."""
        return self._state

    @property
    def backend(self) -> Backend:
        """The backend this scope drives."""
        return self._backend

    @property
    def operations(self) -> tuple[Operation, ...]:
        """The scheduled operations, in the order their precommit runs."""
        return (*self._ops, *self._late, *self._last)

    # -- the state machine ------------------------------------------------------------------

    def _move(self, new: TransactionState) -> None:
        if new not in _MOVES[self._state]:
            raise TransactionStateError(
                f"a transaction scope cannot go from {self._state.value} to {new.value}"
            )
        self._state = new
        self._schedulable = new is _S.ACTIVE or new is _S.PRECOMMITTING

    def _refused(self, action: str) -> TransactionStateError:
        return TransactionStateError(
            f"cannot {action}: the transaction scope is {self._state.value}"
        )

    # -- scheduling (plain calls: nothing here blocks) ---------------------------------------

    def add(self, op: Operation) -> None:
        """Schedule ``op``. A ``SingleLastOperation`` replaces an earlier one of its class."""
        if not isinstance(op, Operation):
            raise TypeError(f"tx.add() takes an Operation instance, not {op!r}")
        if not self._schedulable:
            raise self._refused(f"schedule {op!r}")
        phase = op._hookbus_phase
        if phase == NORMAL:
            self._ops.append(op)
        elif phase == LATE:
            self._late.append(op)
        else:
            assert phase == LAST
            last = self._last
            cls = type(op)
            for index, old in enumerate(last):
                if type(old) is cls:
                    del last[index]
                    if index < self._last_cursor:
                        self._last_cursor -= 1
                    if self._journal is not None:
                        self._journal.append((UNREPLACE, old, index))
                    break
            last.append(op)
        if self._journal is not None:
            self._journal.append((OP, op))

    def accumulate(
        self,
        key: Hashable,
        value: Any,
        factory: Callable[[], Operation],
        container: Callable[[], Any] = set,
    ) -> None:
        """Add ``value`` to the values of the one operation built by ``factory`` under ``key``.

        The first call for a key builds ``factory()`` (an ``Operation`` subclass, a
        ``functools.partial`` or any callable of no argument returning an ``Operation``),
        gives it ``container()`` as its ``values`` and schedules it; later calls only add
        (``add`` or ``append``) to it. A key accumulates with one factory only.
        """
        if not self._schedulable:
            raise self._refused(f"accumulate into {key!r}")
        entry = self._accumulated.get(key)
        if entry is None:
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
            entry = self._accumulated[key] = (op, adder or values.append, is_set, factory)
            if self._journal is not None:
                self._journal.append((ACCOP, key))
        elif entry[3] is not factory and entry[3] != factory:
            raise TypeError(f"key {key!r} accumulates into {_name(entry[3])}, not {_name(factory)}")
        journal = self._journal
        if journal is None:
            entry[1](value)
        elif entry[2]:
            if value not in entry[0].values:
                entry[1](value)
                journal.append((VALUE, key, value))
        else:
            entry[1](value)
            journal.append((VALUE, key, value))

    def doom(self, error: BaseException) -> None:
        """Make the scope unable to commit: at its end it rolls back and raises ``error``.

        The scope runs on (a caught failure may be reported or cleaned up first); when it
        ends normally it runs the rollback path (ROLLBACK, then ``rollback`` on every
        operation) and raises ``error`` itself, with a note saying it doomed the scope. A
        savepoint rolled back after the doom undoes it (the savepoint recovered the failure).
        Dooming a doomed scope keeps the first error.
        """
        if not isinstance(error, BaseException):
            raise TypeError(f"tx.doom() takes an exception, not {error!r}")
        if not self._schedulable:
            raise self._refused(f"doom it with {error!r}")
        if self._doom is None:
            self._doom = error
            if self._journal is not None:
                self._journal.append((DOOM,))

    @property
    def doomed(self) -> BaseException | None:
        """The error that doomed the scope (``tx.doom()``), or None."""
        return self._doom

    def mark_added(self, eid: Hashable) -> None:
        """Record that the entity ``eid`` was added in this scope."""
        if not self._schedulable:
            raise self._refused(f"mark {eid!r} added")
        if eid not in self._added:
            self._added.add(eid)
            if self._journal is not None:
                self._journal.append((ADDED, eid))

    # mark_added's twin on purpose: a helper shared by the two adds a call to each, which
    # measured +20 ns a call (+40%) on the hot path of every insert.
    def mark_deleted(self, eid: Hashable) -> None:
        """Record that the entity ``eid`` was deleted in this scope."""
        if not self._schedulable:
            raise self._refused(f"mark {eid!r} deleted")
        if eid not in self._deleted:
            self._deleted.add(eid)
            if self._journal is not None:
                self._journal.append((DELETED, eid))

    def added(self, eid: Hashable) -> bool:
        """Tell whether ``eid`` was marked added in this scope."""
        return eid in self._added

    def deleted(self, eid: Hashable) -> bool:
        """Tell whether ``eid`` was marked deleted in this scope."""
        return eid in self._deleted

    def savepoint(self) -> Savepoint:
        """Return a savepoint of this scope, to enter with ``async with``."""
        return Savepoint(self)

    # -- the lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Transaction:
        if self._state is not _S.NEW:
            raise self._refused("enter the scope again")
        try:
            await self._backend.begin()
        except BaseException:
            self._move(_S.FAILED)
            raise
        self._move(_S.ACTIVE)
        self._token = _current.set(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._state is _S.ACTIVE:
                if exc is None:
                    await self._commit()
                else:
                    await uncancellable(self._rollback_path, (), True)
            elif self._state is not _S.ROLLED_BACK:
                raise self._refused("end the scope")
        finally:
            token, self._token = self._token, None
            if token is not None:
                _current.reset(token)

    async def rollback(self) -> None:
        """Roll the scope back now: ROLLBACK, then ``rollback`` on every operation.

        The scope is finished afterwards: scheduling is refused and nothing is committed.
        """
        if self._state is not _S.ACTIVE:
            raise self._refused("roll back")
        await uncancellable(self._rollback_path, (), True)

    async def _commit(self) -> None:
        self._move(_S.PRECOMMITTING)
        ran: list[Operation] = []
        try:
            await self._precommit(ran)
        except BaseException:
            await uncancellable(self._rollback_path, ran, True)
            raise
        if self._doom is not None:
            await uncancellable(self._rollback_path, ran, True)
            raise _doomed_error(self._doom)
        await uncancellable(self._commit_and_callbacks, ran)
        # A cancellation of anyio's that was held off by the shield surfaces here.
        await anyio.lowlevel.checkpoint_if_cancelled()

    async def _precommit(self, ran: list[Operation]) -> None:
        if self._doom is not None:
            return
        normal, late, last = self._ops, self._late, self._last
        i = j = 0
        self._last_cursor = 0
        while True:
            # Re-read the lengths each time: operations scheduled meanwhile run in this phase.
            if i < len(normal):
                op = normal[i]
                i += 1
            elif j < len(late):
                op = late[j]
                j += 1
            elif self._last_cursor < len(last):
                op = last[self._last_cursor]
                self._last_cursor += 1
            else:
                return
            ran.append(op)
            await op.precommit()
            if self._doom is not None:
                return  # doomed meanwhile: _commit rolls back

    async def _commit_and_callbacks(self, ran: list[Operation]) -> None:
        self._move(_S.COMMITTING)
        try:
            outcome = await self._backend.commit()
        except CommitOutcomeUnknownError:
            self._move(_S.FAILED)
            raise
        except BaseException:
            await self._rollback_path(ran, False)
            raise
        if outcome is not CommitOutcome.COMMITTED:
            await self._rollback_path(ran, False)
            raise TransactionAbortedError(
                "the database answered COMMIT with ROLLBACK: a statement failed inside the "
                "scope and its error was caught, which aborted the transaction; nothing was "
                "committed and the rollback operations ran"
            )
        self._move(_S.COMMITTED)
        for op in self.operations:
            try:
                await op.postcommit()
            except Exception:
                self.postcommit_errors += 1
                logger.exception("postcommit of %r failed after COMMIT (data committed)", op)

    async def _rollback_path(self, ran: list[Operation] | tuple[()], send_rollback: bool) -> None:
        self._schedulable = False
        for op in reversed(ran):
            await quietly(op.revertprecommit, op)
        if send_rollback:
            try:
                await self._backend.rollback()
            except Exception:
                # The session is gone or broken: the server rolls back on its own.
                logger.warning("ROLLBACK failed; the server ends the transaction", exc_info=True)
        self._move(_S.ROLLED_BACK)
        for op in self.operations:
            await quietly(op.rollback, op)


def _doomed_error(error: BaseException) -> BaseException:
    error.add_note(
        "raised at the end of the transaction scope, which it had doomed (tx.doom()): "
        "the scope rolled back and committed nothing"
    )
    return error


def _name(factory: object) -> str:
    return str(getattr(factory, "__qualname__", None) or repr(factory))
