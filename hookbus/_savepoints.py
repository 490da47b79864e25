"""Savepoints of a transaction scope: ``async with tx.savepoint():``.

A savepoint asks the scope's ``Ledger`` for a ``Mark`` when it begins; releasing it keeps
what was done since, rolling it back asks the ledger to undo it (``undo_to``) and calls
``rollback`` on the operations it dropped. SAVEPOINT, RELEASE and ROLLBACK TO run
uncancellable, as COMMIT does: a timeout or cancellation that arrives meanwhile is raised
once the statement has its answer, so hookbus always knows whether the savepoint exists
(cancelling a statement half-way would leave that unknown, and a ROLLBACK TO a savepoint
already released aborts the whole transaction).

In a scope that has not begun (it begins lazily, at its first statement), a savepoint sends
nothing when entered: the scope sends its SAVEPOINT right after BEGIN, and a savepoint whose
block sent no statement ends with no statement either (``SavepointScope.defer_savepoint``).
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any, Final, Protocol, TypeAlias, final

from ._backend import Backend
from ._exceptions import TransactionStateError
from ._ledger import Ledger, Mark
from ._shield import callbacks, in_own_task, uncancellable
from ._states import OPEN, TransactionState

# An open savepoint and the task that entered it: what its scope holds while it is open, and
# what the contexts of that task and of the tasks it starts meanwhile see (a context variable).
Holding: TypeAlias = "tuple[Mark, asyncio.Task[Any] | None]"
# What a savepoint gives back to its scope when it ends (``Transaction._hold_savepoint``): the
# savepoint open before it and the one its context saw.
Held: TypeAlias = "tuple[Holding | None, Holding | None]"

__all__ = ["Savepoint", "SavepointScope"]

logger: Final = logging.getLogger("hookbus")


class SavepointScope(Protocol):
    """What a savepoint reads of its scope: its state, and where its SAVEPOINT waits for the
    scope's BEGIN."""

    @property
    def state(self) -> TransactionState: ...

    def defer_savepoint(self, mark: Mark) -> bool:
        """Keep the SAVEPOINT of ``mark`` for the scope's BEGIN, if the scope has not begun
        and begins lazily (True); else False: the savepoint sends it now."""
        ...

    def forget_savepoint(self, mark: Mark) -> bool:
        """True if the SAVEPOINT of ``mark`` was never sent (it waited for a BEGIN that did
        not come, or failed); it waits no more. False once it was set."""
        ...

    async def begin(self) -> None: ...

    def _not_holder(self, action: str) -> TransactionStateError | None:
        """The refusal of ``action`` if another task holds a savepoint of the scope open."""
        ...

    def _hold_savepoint(self, mark: Mark) -> Held:
        """Make ``mark`` the innermost savepoint open; return what ``_unhold_savepoint``
        takes when it ends."""
        ...

    def _unhold_savepoint(self, mark: Mark, held: Held) -> None:
        """The savepoint of ``mark`` ended."""
        ...


@final
class Savepoint:
    """A savepoint of a transaction scope; get it from ``tx.savepoint()``.

    Leaving the block normally releases it: what it did stays. Leaving it with an exception
    rolls it back: the operations it scheduled get ``rollback`` then and there and are
    dropped, values it accumulated leave their containers, entities it marked are forgotten,
    a doom it set is lifted; the exception propagates. Savepoints nest. A cancellation
    (a timeout) that arrives during SAVEPOINT, RELEASE or ROLLBACK TO is raised once the
    statement has its answer: a released savepoint stays released, a rolled back one rolled
    back, and the scope can go on and commit. Entered before the scope's first statement,
    it waits for BEGIN: a block that sends no statement sends nothing.

    While it is open, the scope takes work only from the task that entered it and the tasks
    started inside it: another task's ``add``, ``accumulate``, ``mark_added``, ``doom``,
    savepoint or first statement (BEGIN) is refused with ``TransactionStateError``, since
    rolling the savepoint back would undo that work too.
    """

    __slots__ = ("_backend", "_entered", "_held", "_ledger", "_mark", "_scope")

    def __init__(self, scope: SavepointScope, backend: Backend, ledger: Ledger) -> None:
        self._scope = scope
        self._backend = backend
        self._ledger = ledger
        self._entered = False
        self._mark: Mark | None = None  # set once SAVEPOINT succeeded
        # What the scope held before this savepoint (for _unhold_savepoint), once held.
        self._held: Held | None = None

    async def __aenter__(self) -> Savepoint:
        state = self._scope.state
        if state not in OPEN:
            raise TransactionStateError(
                f"cannot set a savepoint: the transaction scope is {state.value}"
            )
        if self._entered:
            raise TransactionStateError("a savepoint is entered once")
        refusal = self._scope._not_holder("set a savepoint")
        if refusal is not None:
            raise refusal
        self._entered = True
        mark = self._ledger.mark_savepoint()
        self._held = self._scope._hold_savepoint(mark)
        if self._scope.defer_savepoint(mark):
            # The scope has not begun: SAVEPOINT goes with BEGIN, at the first statement;
            # a block that sends none sends nothing.
            self._mark = mark
            return self
        # Here the scope has begun (a scope that does not begin lazily begins when entered).
        try:
            await uncancellable(self._set, mark)
        except BaseException:
            # SAVEPOINT failed, or it succeeded and the caller was cancelled meanwhile: the
            # block does not run, and the savepoint must not stay.
            await uncancellable(self._abandon, mark)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        mark = self._mark
        assert mark is not None
        if self._scope.state not in OPEN:
            self._unhold(mark)
            return  # the whole scope rolled back meanwhile: nothing left to release or undo
        self._ledger.require_innermost(mark)  # before any statement is sent
        try:
            if self._scope.forget_savepoint(mark):  # never set: nothing to send
                if exc is None:
                    self._ledger.release(mark)
                else:
                    fatal = await callbacks(self._ledger.undo_to(mark), "rollback")
                    if fatal is not None:
                        raise fatal
            elif exc is None:
                await uncancellable(self._release, mark)
            else:
                await uncancellable(self._rollback, mark)
        finally:
            # Once what it undoes is undone: until then, other tasks' work stays refused.
            self._unhold(mark)

    def _unhold(self, mark: Mark) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._scope._unhold_savepoint(mark, held)

    async def _set(self, mark: Mark) -> None:
        await self._backend.savepoint(mark.name)
        self._mark = mark

    async def _abandon(self, mark: Mark) -> None:
        if self._mark is not None:
            try:
                await self._backend.release(mark.name)
            except Exception:
                logger.warning("RELEASE SAVEPOINT %s failed", mark.name, exc_info=True)
        self._unhold(mark)
        self._ledger.release(mark)

    async def _release(self, mark: Mark) -> None:
        try:
            await self._backend.release(mark.name)
        except BaseException:
            # RELEASE refused (a SQL error was swallowed in the block, or the session is
            # gone): what the block scheduled must not outlive it.
            await self._rollback(mark)
            raise
        self._ledger.release(mark)

    async def _rollback(self, mark: Mark) -> None:
        """ROLLBACK TO SAVEPOINT, undo the ledger to ``mark``, roll its operations back (in a
        task of its own: their timeouts fire there, see ``in_own_task``)."""
        await in_own_task(self._roll_back, mark)

    async def _roll_back(self, mark: Mark) -> None:
        try:
            await self._backend.rollback_to(mark.name)
        except Exception:
            logger.warning("ROLLBACK TO SAVEPOINT %s failed", mark.name, exc_info=True)
        dropped = self._ledger.undo_to(mark)
        fatal = await callbacks(dropped, "rollback")
        if fatal is not None:
            raise fatal
