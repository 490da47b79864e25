"""The transaction scope: operations, shared data and savepoints around one COMMIT.

A scope is an async context manager over a backend (``hookbus.MemoryBackend``, or the
asyncpg adapter's). While it is open, ``current_transaction()`` finds it from anywhere below
(a hook, a service function). On a backend that begins lazily (``backend.lazy``), entering
it sends nothing: its first statement (``tx.begin()``) does, and a scope that never begins
sends no BEGIN nor COMMIT. At its end it drives the lifecycle:

1. ``precommit`` of every operation, in scheduling order; operations scheduled meanwhile run
   in the same phase, before the ``LateOperation``s, and a ``SingleLastOperation`` runs last;
   then, on a scope that began, the backend's ``prepare`` if it has one (an ORM's flush):
   what it raises is a precommit's error;
2. if a precommit raises (or the scope was doomed with ``tx.doom()``): ``revertprecommit``
   (newest first) on those that ran, ROLLBACK, ``rollback`` on every operation, and the
   error propagates;
3. COMMIT, uncancellable: if the server refuses it, ``revertprecommit`` and ``rollback``
   (no ROLLBACK is sent) and the error propagates; if the server answers ROLLBACK (an error
   was swallowed inside the scope) the same, then ``TransactionAbortedError``;
4. the backend gives its session back (``close``: the pooled connection goes back to its
   pool), then ``postcommit`` of every operation: errors are logged on the ``hookbus``
   logger and counted in ``tx.postcommit_errors``, never raised; a cancellation of the
   scope's task stops the phase (the operations left are logged as not run, counted in
   ``tx.postcommit_not_run``) and propagates;
5. an exception in the body, or ``await tx.rollback()``: ROLLBACK, then ``rollback`` on
   every operation.

A cancelled scope still completes its ROLLBACK and rollback operations; a COMMIT already
sent is awaited to its outcome and its callbacks run before the cancellation propagates
(postcommit alone can be cancelled while it runs).
In ``revertprecommit``, ``rollback`` and ``postcommit`` every operation runs whatever another
one raised: errors are logged, never masking the scope's outcome; a ``KeyboardInterrupt`` or
``SystemExit`` propagates once the phase has run. A ``CancelledError`` an operation raises
while the scope's task is not being cancelled is that operation's error.

The scope's bookkeeping (queues, accumulations, marks, doom, the savepoints' undo log) is a
``Ledger`` (``_ledger``); its states and their legal moves are ``TransactionState``'s table.

>>> import asyncio, hookbus
>>> async def main() -> None:
...     async with hookbus.transaction() as tx:
...         tx.data["seen"] = True
>>> asyncio.run(main())
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, Final, Protocol

import anyio.lowlevel

from ._backend import Backend, CommitOutcome, MemoryBackend
from ._exceptions import CommitOutcomeUnknownError, TransactionAbortedError, TransactionStateError
from ._ledger import Ledger, Mark
from ._operations import Operation
from ._savepoints import Held, Holding, Savepoint
from ._shield import callbacks, in_own_task, on_asyncio, scope_cancelled, settled, uncancellable
from ._states import MOVES, OPEN, TransactionState

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


_S = TransactionState

# The scheduling methods the ledger's own stand in for while the scope is open.
_SCHEDULING: Final = ("add", "accumulate", "mark_added", "mark_deleted")

_current: ContextVar[Transaction | None] = ContextVar("hookbus.transaction", default=None)

# The innermost savepoint this context entered (a task started inside a savepoint inherits
# it): while a scope has a savepoint open, only a context that sees that savepoint here may
# change the scope, whose savepoint would otherwise undo, unsaid, another task's work.
_savepoint_seen: ContextVar[Holding | None] = ContextVar("hookbus.savepoint", default=None)


class _Accumulate(Protocol):
    """The signature of ``tx.accumulate``."""

    def __call__(
        self,
        key: Hashable,
        value: Any,
        factory: Callable[[], Operation],
        container: Callable[[], Any] = ...,
    ) -> None: ...


class Observer(Protocol):
    """What watches every scope's lifecycle (``_observe``): private, for instrumentation.

    ``moved`` is told each state move of a scope, as it happens; ``ended`` is told once
    the scope's ``async with`` block has been left (its last move is the scope's state then).
    """

    def moved(self, tx: Transaction, old: TransactionState, new: TransactionState) -> None: ...

    def ended(self, tx: Transaction) -> None: ...


# The observer of every scope, or None: read once per state move and once per scope end
# (never per operation), so that with none set a scope pays two tests of None in all.
_observer: Observer | None = None


def _observe(observer: Observer | None) -> Observer | None:
    """Set the observer of every scope from now on (``None``: none); return the previous one."""
    global _observer
    previous, _observer = _observer, observer
    return previous


def current_transaction() -> Transaction:
    """Return the transaction scope open in this context.

    Raises ``TransactionStateError`` when there is none.
    """
    tx = _current.get()
    if tx is None:
        raise _no_scope()
    return tx


def _no_scope() -> TransactionStateError:
    return TransactionStateError(
        "no transaction scope is open here: open one with "
        "`async with hookbus.transaction():` (or an adapter's `transaction()`)"
    )


def transaction_data() -> dict[str, Any]:
    """Return the ``data`` dict of the current transaction scope, for hooks to share."""
    return current_transaction().data


def added_in_transaction(eid: Hashable) -> bool:
    """Tell whether the entity ``eid`` was added in the current transaction scope."""
    tx = _current.get()  # current_transaction(), inlined: hooks call this on every event
    if tx is None:
        raise _no_scope()
    return eid in tx._ledger.added


def deleted_in_transaction(eid: Hashable) -> bool:
    """Tell whether the entity ``eid`` was deleted in the current transaction scope."""
    tx = _current.get()
    if tx is None:
        raise _no_scope()
    return eid in tx._ledger.deleted


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
    (``add``, ``accumulate``, ``mark_added``, ``doom``) is refused once the scope is finished.
    """

    # The four scheduling calls are slots holding a bound method: the ledger's own while the
    # scope is open, the scope's refusal otherwise (_move sets them, following the state). A
    # slot is read in C and the ledger's method called directly: one Python call a
    # scheduling, where a method of the scope forwarding to the ledger's made two.
    __slots__ = {  # noqa: RUF023  (the scheduling calls first, as help() shows them)
        "add": """tx.add(op): schedule the operation ``op``.

        A ``SingleLastOperation`` replaces a pending (not yet run) one of its class; one
        whose precommit already ran keeps its place and gets its postcommit or rollback.
        Refused (``TransactionStateError``) unless the scope is open.""",
        "accumulate": """tx.accumulate(key, value, factory, container=set): add ``value`` to the
        values of the one operation built by ``factory`` under ``key``.

        The first call for a key builds ``factory()`` (an ``Operation`` subclass, a
        ``functools.partial`` or any callable of no argument returning an ``Operation``),
        gives it ``container()`` as its ``values`` and schedules it; later calls only add
        (``add`` or ``append``) to it. A key accumulates with one factory only. Values
        accumulated once that operation's precommit has started go to a new operation from
        the same factory, scheduled in the same precommit phase (it still runs before COMMIT).
        Refused unless the scope is open.""",
        "mark_added": "tx.mark_added(eid): record that the entity ``eid`` was added here.",
        "mark_deleted": "tx.mark_deleted(eid): record that the entity ``eid`` was deleted here.",
        "__dict__": None,  # for what observers keep on a scope (hookbus_otel's span)
        "_backend": None,
        "_backend_close": None,
        "_backend_prepare": None,
        "_begun": None,
        "_beginning": None,
        "_begins_lazily": None,
        "_deferred": None,
        "_held": None,
        "_ledger": None,
        "_state": None,
        "_token": None,
        "data": "Data shared by the hooks and operations of this scope.",
        "postcommit_errors": "How many postcommit operations raised (logged, never raised).",
        "postcommit_not_run": "How many postcommit operations a cancellation left unrun.",
    }

    add: Callable[[Operation], None]
    accumulate: _Accumulate
    mark_added: Callable[[Hashable], None]
    mark_deleted: Callable[[Hashable], None]

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        # Optional in the protocol: a backend without a session to give back has none.
        self._backend_close: Callable[[], Awaitable[None]] | None = getattr(backend, "close", None)
        self._backend_prepare: Callable[[], Awaitable[None]] | None = getattr(
            backend, "prepare", None
        )
        self._state = TransactionState.NEW
        # The transaction begins lazily (``begin``): no session is taken and no statement
        # sent until the first statement needs it.
        self._begun = False
        self._beginning: list[anyio.Event] | None = None
        # Only a backend that sees every statement of the scope go by can begin lazily (a
        # connection its user also holds would run statements outside the transaction).
        self._begins_lazily: bool = getattr(backend, "lazy", False) is True
        # The savepoints entered before BEGIN, outermost first: their SAVEPOINTs are sent
        # right after it (``begin``), or never, if no statement comes.
        self._deferred: list[Mark] = []
        # The innermost savepoint open and the task that entered it (None: none is open).
        self._held: Holding | None = None
        self._token: Token[Transaction | None] | None = None
        self._ledger = Ledger()
        self.data: dict[str, Any] = {}
        self.postcommit_errors = 0
        self.postcommit_not_run = 0
        self._schedule_refused()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        overridden = [name for name in _SCHEDULING if name in cls.__dict__]
        if overridden:
            raise TypeError(
                f"{cls.__qualname__} cannot override {', '.join(overridden)}: while the scope "
                "is open, its ledger serves these calls directly (they are slots)"
            )

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
        return self._ledger.operations()

    @property
    def doomed(self) -> BaseException | None:
        """The error that doomed the scope (``tx.doom()``), or None."""
        return self._ledger.doomed

    # -- the state machine ------------------------------------------------------------------

    def _move(self, new: TransactionState) -> None:
        old = self._state
        if new not in MOVES[old]:
            raise TransactionStateError(
                f"a transaction scope cannot go from {old.value} to {new.value}"
            )
        self._state = new
        if _observer is not None:
            _observer.moved(self, old, new)
        opens = new in OPEN
        if opens is not (old in OPEN):
            # Open: the scheduling calls go straight to the ledger. Closed: to the scope's
            # refusals. The state decides; these follow it, here only.
            # (A scope opens once, entering: no savepoint is open then.)
            if opens:
                ledger = self._ledger
                self.add = ledger.add
                self.accumulate = ledger.accumulate
                self.mark_added = ledger.mark_added
                self.mark_deleted = ledger.mark_deleted
            else:
                self._schedule_refused()

    def _schedule_refused(self) -> None:
        self.add = self._refuse_add
        self.accumulate = self._refuse_accumulate
        self.mark_added = self._refuse_mark_added
        self.mark_deleted = self._refuse_mark_deleted

    def _refused(self, action: str) -> TransactionStateError:
        return TransactionStateError(
            f"cannot {action}: the transaction scope is {self._state.value}"
        )

    # -- scheduling refused (the scope is not open): what the four scheduling slots hold then

    def _refuse_add(self, op: Operation) -> None:
        if not isinstance(op, Operation):
            raise TypeError(f"tx.add() takes an Operation instance, not {op!r}")
        raise self._refused(f"schedule {op!r}")

    def _refuse_accumulate(
        self,
        key: Hashable,
        value: Any,
        factory: Callable[[], Operation],
        container: Callable[[], Any] = set,
    ) -> None:
        raise self._refused(f"accumulate into {key!r}")

    def _refuse_mark_added(self, eid: Hashable) -> None:
        raise self._refused(f"mark {eid!r} added")

    def _refuse_mark_deleted(self, eid: Hashable) -> None:
        raise self._refused(f"mark {eid!r} deleted")

    # -- while a savepoint is open: only the task inside it changes the scope ----------------

    def _hold_savepoint(self, mark: Mark) -> Held:
        """Make ``mark`` the innermost savepoint open, in this task's context; return what to
        give ``_unhold_savepoint`` when it ends. The caller checked ``_not_holder`` first."""
        outer = self._held
        held = (outer, _savepoint_seen.get())
        try:
            task = asyncio.current_task()
        except RuntimeError:  # not on asyncio (trio, through anyio)
            task = None
        holding = self._held = (mark, task)
        _savepoint_seen.set(holding)
        if outer is None and self._state in OPEN:
            # The ledger's calls behind a check of the caller's task, while this one is open.
            self.add = self._held_add
            self.accumulate = self._held_accumulate
            self.mark_added = self._held_mark_added
            self.mark_deleted = self._held_mark_deleted
        return held

    def _unhold_savepoint(self, mark: Mark, held: Held) -> None:
        """The savepoint of ``mark`` ended: its enclosing one (or none) is innermost again."""
        holding = self._held
        if holding is None or holding[0] is not mark:
            return
        outer, seen = held
        self._held = outer
        _savepoint_seen.set(seen)
        if outer is None and self._state in OPEN:
            ledger = self._ledger
            self.add = ledger.add
            self.accumulate = ledger.accumulate
            self.mark_added = ledger.mark_added
            self.mark_deleted = ledger.mark_deleted

    def _not_holder(self, action: str) -> TransactionStateError | None:
        """The refusal of ``action`` if a savepoint is open that this task is not inside."""
        held = self._held
        if held is None or _savepoint_seen.get() is held:
            return None
        mark, task = held
        return TransactionStateError(
            f"cannot {action}: savepoint {mark.name} of this scope is open in another task "
            f"({_named(task)}), and rolling it back would undo this too; do it in that "
            "task (or in a task it starts inside the savepoint), or once the savepoint has ended"
        )

    def _held_add(self, op: Operation) -> None:
        if _savepoint_seen.get() is not self._held:
            raise self._refused_to_other(f"schedule {op!r}")
        self._ledger.add(op)

    def _held_accumulate(
        self,
        key: Hashable,
        value: Any,
        factory: Callable[[], Operation],
        container: Callable[[], Any] = set,
    ) -> None:
        if _savepoint_seen.get() is not self._held:
            raise self._refused_to_other(f"accumulate into {key!r}")
        self._ledger.accumulate(key, value, factory, container)

    def _held_mark_added(self, eid: Hashable) -> None:
        if _savepoint_seen.get() is not self._held:
            raise self._refused_to_other(f"mark {eid!r} added")
        self._ledger.mark_added(eid)

    def _held_mark_deleted(self, eid: Hashable) -> None:
        if _savepoint_seen.get() is not self._held:
            raise self._refused_to_other(f"mark {eid!r} deleted")
        self._ledger.mark_deleted(eid)

    def _refused_to_other(self, action: str) -> TransactionStateError:
        refusal = self._not_holder(action)
        assert refusal is not None
        return refusal

    # -- scheduling (plain calls: nothing here blocks) ---------------------------------------

    def accumulate_many(
        self,
        key: Hashable,
        values: Iterable[Any],
        factory: Callable[[], Operation],
        container: Callable[[], Any] = set,
    ) -> None:
        """``tx.accumulate(key, value, factory, container)`` for each of ``values``, at once.

        Outside savepoints the operation's container takes them in one call (``update`` for
        a set-like one, ``extend`` for a list-like one): the bulk form of accumulating, for
        an import of many rows. Refused (``TransactionStateError``) unless the scope is open.
        """
        if self._state not in OPEN:
            raise self._refused(f"accumulate into {key!r}")
        if self._held is not None and (refusal := self._not_holder(f"accumulate into {key!r}")):
            raise refusal
        self._ledger.accumulate_many(key, values, factory, container)

    def unmark_deleted(self, eid: Hashable) -> None:
        """Forget that the entity ``eid`` was deleted in this scope: its delete was cancelled
        (a ``before_delete_entity`` hook raised ``Break``). A savepoint rolled back afterwards
        marks it again."""
        if self._state not in OPEN:
            raise self._refused(f"unmark {eid!r} deleted")
        if self._held is not None and (refusal := self._not_holder(f"unmark {eid!r} deleted")):
            raise refusal
        self._ledger.unmark_deleted(eid)

    def added(self, eid: Hashable) -> bool:
        """Tell whether ``eid`` was marked added in this scope."""
        return eid in self._ledger.added

    def deleted(self, eid: Hashable) -> bool:
        """Tell whether ``eid`` was marked deleted in this scope."""
        return eid in self._ledger.deleted

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
        if self._state not in OPEN:
            raise self._refused(f"doom it with {error!r}")
        if self._held is not None and (refusal := self._not_holder(f"doom it with {error!r}")):
            raise refusal
        self._ledger.doom(error)

    @property
    def begun(self) -> bool:
        """Whether the database transaction has begun (BEGIN sent): see ``begin``."""
        return self._begun

    async def begin(self) -> None:
        """Begin the database transaction now, if it has not begun.

        On a backend that begins lazily (``backend.lazy``: the in-memory one, the asyncpg one
        on a pool), entering the scope takes no connection and sends nothing; its first
        statement (the adapter's connection calls this) sends BEGIN, then the SAVEPOINT of
        each savepoint entered meanwhile (they wait for it). Other backends begin when the
        scope is entered.
        A scope that never begins commits nothing: its operations still run their phases
        (precommit, postcommit, or rollback), with no statement sent. If BEGIN fails or is
        cancelled, the error propagates and the scope has still not begun (the backend gave
        back what it took): the next statement tries again. Refused once the scope is over.
        """
        if self._begun:
            return
        if self._state not in OPEN:
            raise self._refused("begin the transaction")
        if self._held is not None and (refusal := self._not_holder("begin the transaction")):
            raise refusal  # its SAVEPOINTs wait for BEGIN: this statement would run inside
        waiting = self._beginning
        if waiting is not None:  # another task of this scope is sending BEGIN: wait for it
            done = anyio.Event()
            waiting.append(done)
            await done.wait()
            await self.begin()  # begun meanwhile (returns), or failed: this task tries
            return
        # The tasks that wait for this BEGIN, if any (an anyio.Event each: an Event costs
        # microseconds to make, so none is made unless another task waits).
        waiting = self._beginning = []
        try:
            await self._backend.begin()
            if self._state not in OPEN:
                # The scope ended while BEGIN was on its way (a task it started sent the
                # statement): the scope gave back what the backend took; this task's
                # statement does not run in a transaction no one will commit.
                raise self._refused("begin the transaction")
            self._begun = True
            if self._deferred:
                await uncancellable(self._set_deferred)
        finally:
            self._beginning = None
            for done in waiting:
                done.set()

    async def _set_deferred(self) -> None:
        # Each SAVEPOINT waits for its answer (uncancellable): hookbus knows which are set.
        # One that fails leaves it and those inside it unset (a savepoint that never existed
        # is neither released nor rolled back to); the transaction is then broken, and its
        # COMMIT fails or answers ROLLBACK.
        deferred = self._deferred
        while deferred:
            await self._backend.savepoint(deferred[0].name)
            del deferred[0]

    def defer_savepoint(self, mark: Mark) -> bool:
        """Keep the SAVEPOINT of ``mark`` for BEGIN, if this scope has not begun and begins
        lazily; see ``Savepoint``."""
        if self._begun or not self._begins_lazily:
            return False
        self._deferred.append(mark)
        return True

    def forget_savepoint(self, mark: Mark) -> bool:
        """Whether the SAVEPOINT of ``mark`` was never sent; it is not sent after this."""
        deferred = self._deferred
        if mark in deferred:
            deferred.remove(mark)
            return True
        return False

    def savepoint(self) -> Savepoint:
        """Return a savepoint of this scope, to enter with ``async with``."""
        return Savepoint(self, self._backend, self._ledger)

    # -- the lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Transaction:
        if self._state is not _S.NEW:
            raise self._refused("enter the scope again")
        if not self._begins_lazily:
            try:
                await self._backend.begin()
            except BaseException:
                self._move(_S.FAILED)
                await uncancellable(self._close)
                raise
            self._begun = True
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
                    await uncancellable(self._rollback_path, True)
            elif self._state is not _S.ROLLED_BACK:
                raise self._refused("end the scope")
        finally:
            token, self._token = self._token, None
            if token is not None:
                _current.reset(token)
            if _observer is not None:
                _observer.ended(self)

    async def rollback(self) -> None:
        """Roll the scope back now: ROLLBACK, then ``rollback`` on every operation.

        The scope is finished afterwards: scheduling is refused and nothing is committed.
        """
        if self._state is not _S.ACTIVE:
            raise self._refused("roll back")
        await uncancellable(self._rollback_path, True)

    async def _commit(self) -> None:
        ledger = self._ledger
        if ledger.doomed is None:
            self._move(_S.PRECOMMITTING)
            try:
                await ledger.precommit()
                prepare = self._backend_prepare
                if prepare is not None and self._begun and ledger.doomed is None:
                    # The backend's last work before COMMIT (an ORM's flush): what it raises
                    # fails the scope as a precommit would, never as a refused COMMIT.
                    await prepare()
            except BaseException as exc:
                ran = ledger.ran()
                error = _own_error(exc, ran[-1] if ran else None)
                await uncancellable(self._rollback_path, True)
                if error is exc:
                    raise
                raise error from exc
        doom = ledger.doomed
        if doom is not None:
            await uncancellable(self._rollback_path, True)
            doom.add_note(
                "raised at the end of the transaction scope, which it had doomed (tx.doom()): "
                "the scope rolled back and committed nothing"
            )
            raise doom
        # COMMIT and the giving back of the connection run to their end; a cancellation
        # that arrived meanwhile is held until postcommit has run (postcommit itself can be
        # cancelled: it runs with the connection back in its pool).
        here = on_asyncio()  # asked once: on 3.11 it is a getpid() system call
        _, cancelled = await settled(self._commit_and_close, asyncio_running=here)
        await self._postcommit()
        if cancelled is not None:
            raise cancelled
        if not here:
            # A cancellation of anyio's that was held off by the shield surfaces here (on
            # asyncio, settled() kept it and it was raised above).
            await anyio.lowlevel.checkpoint_if_cancelled()

    async def _commit_and_close(self) -> None:
        self._move(_S.COMMITTING)
        if not self._begun:  # nothing began: nothing to commit, no session to give back
            self._move(_S.COMMITTED)
            return
        try:
            outcome = await self._backend.commit()
        except CommitOutcomeUnknownError:
            self._move(_S.FAILED)
            await self._close()
            raise
        except BaseException:
            await self._rollback_path(False)
            raise
        if outcome is not CommitOutcome.COMMITTED:
            await self._rollback_path(False)
            raise TransactionAbortedError(
                "the database answered COMMIT with ROLLBACK: a statement failed inside the "
                "scope and its error was caught, which aborted the transaction; nothing was "
                "committed and the rollback operations ran"
            )
        self._move(_S.COMMITTED)
        await self._close()

    async def _postcommit(self) -> None:
        # callbacks(), written out: this loop runs on every commit, and op.postcommit()
        # costs 50 ns an operation less than getattr(op, "postcommit")().
        fatal: BaseException | None = None
        ops = self._ledger.operations()
        for op in ops:
            try:
                await op.postcommit()
            except (KeyboardInterrupt, SystemExit) as exc:
                fatal = fatal or exc
            except BaseException as exc:  # an Exception, or a CancelledError
                if isinstance(exc, asyncio.CancelledError) and scope_cancelled():
                    # The scope's task is cancelled: this postcommit and the ones after it
                    # do not run (the data stays committed), and the cancellation goes on.
                    left = ops[ops.index(op) :]
                    logger.warning(
                        "postcommit cancelled after COMMIT (data committed): not run for %s",
                        ", ".join(map(repr, left)),
                    )
                    self.postcommit_not_run = len(left)
                    raise
                self.postcommit_errors += 1
                logger.exception("postcommit of %r failed after COMMIT (data committed)", op)
        if fatal is not None:
            raise fatal

    async def _close(self) -> None:
        """Give the backend's session back (to its pool): the outcome is known."""
        close = self._backend_close
        if close is not None:
            try:
                await close()
            except Exception:
                logger.warning(
                    "the backend could not give its session back; the scope's outcome stands",
                    exc_info=True,
                )

    async def _rollback_path(self, send_rollback: bool) -> None:
        # Run shielded (settled): in a task of its own, so that the timeouts of the
        # operations and of the backend's ROLLBACK fire there (``in_own_task``).
        await in_own_task(self._roll_back, send_rollback)

    async def _roll_back(self, send_rollback: bool) -> None:
        self._move(_S.ROLLING_BACK)
        fatal = await callbacks(reversed(self._ledger.ran()), "revertprecommit")
        if send_rollback and self._begun:
            try:
                await self._backend.rollback()
            except Exception:
                # The session is gone or broken: the server rolls back on its own.
                logger.warning("ROLLBACK failed; the server ends the transaction", exc_info=True)
        if self._begun:
            await self._close()
        self._move(_S.ROLLED_BACK)
        fatal_in_rollback = await callbacks(self._ledger.operations(), "rollback")
        fatal = fatal or fatal_in_rollback
        if fatal is not None:
            raise fatal


def _named(task: asyncio.Task[Any] | None) -> str:
    return "a task" if task is None else f"task {task.get_name()!r}"


def _own_error(exc: BaseException, op: Operation | None) -> BaseException:
    """What a precommit's ``exc`` fails the commit with.

    A ``CancelledError`` raised while the scope's task is not being cancelled is the
    operation's own error: raising it as is would cancel a caller nobody cancelled.
    """
    if isinstance(exc, asyncio.CancelledError) and not scope_cancelled():
        return TransactionAbortedError(
            f"precommit of {op!r} raised CancelledError although the scope was not "
            "cancelled; the scope rolled back and committed nothing"
        )
    return exc
