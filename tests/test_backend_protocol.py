"""What the scope asks of a backend beyond BEGIN and COMMIT: prepare, close, a lazy begin.

A backend written for another driver or an ORM (psycopg, SQLAlchemy's ``AsyncSession``)
plugs into these, in the core, for every backend.
"""

from __future__ import annotations

import asyncio
import dataclasses

import anyio
import pytest
from _recording import Recorded

import hookbus
from hookbus import CommitOutcome, MemoryBackend, TransactionState


class Flushing:
    """A lazy backend with an ORM's flush before COMMIT, and a session to give back."""

    lazy = True

    def __init__(self, flush_error: BaseException | None = None) -> None:
        self.memory = MemoryBackend()
        self.flush_error = flush_error
        self.log = self.memory.statements

    async def begin(self) -> None:
        await self.memory.begin()

    async def prepare(self) -> None:
        self.log.append("flush")
        if self.flush_error is not None:
            raise self.flush_error

    async def commit(self) -> CommitOutcome:
        return await self.memory.commit()

    async def rollback(self) -> None:
        await self.memory.rollback()

    async def close(self) -> None:
        self.log.append("close")

    async def savepoint(self, name: str) -> None:
        await self.memory.savepoint(name)

    async def release(self, name: str) -> None:
        await self.memory.release(name)

    async def rollback_to(self, name: str) -> None:
        await self.memory.rollback_to(name)


class Logs(Recorded):
    """Records its phases in the backend's log too, to show their order against statements."""

    def __init__(self, log: list[str], name: str, backend: Flushing) -> None:
        super().__init__(log, name)
        self.backend = backend

    async def precommit(self) -> None:
        self.backend.log.append("precommit")
        await super().precommit()

    async def postcommit(self) -> None:
        self.backend.log.append("postcommit")
        await super().postcommit()

    async def rollback(self) -> None:
        self.backend.log.append("rollback")
        await super().rollback()


async def test_prepare_runs_after_precommit_and_close_before_postcommit() -> None:
    backend, log = Flushing(), list[str]()
    async with hookbus.transaction(backend) as tx:
        await tx.begin()
        tx.add(Logs(log, "a", backend))
    assert backend.log == ["BEGIN", "precommit", "flush", "COMMIT", "close", "postcommit"]


async def test_a_failed_prepare_is_a_precommit_failure_not_a_refused_commit() -> None:
    backend, log = Flushing(flush_error=ValueError("flush failed")), list[str]()
    with pytest.raises(ValueError, match="flush failed"):
        async with hookbus.transaction(backend) as tx:
            await tx.begin()
            tx.add(Logs(log, "a", backend))
    assert backend.log == ["BEGIN", "precommit", "flush", "ROLLBACK", "close", "rollback"]
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]
    assert tx.state is TransactionState.ROLLED_BACK


async def test_a_scope_that_never_began_neither_prepares_nor_closes() -> None:
    backend, log = Flushing(), list[str]()
    async with hookbus.transaction(backend) as tx:
        tx.add(Logs(log, "a", backend))
    assert backend.log == ["precommit", "postcommit"]


# -- accumulating many values at once ---------------------------------------------------------


class Collect(hookbus.Operation):
    seen: list[object]

    async def precommit(self) -> None:
        Collect.seen.append(self.values)


async def test_accumulate_many_adds_every_value_to_one_operation() -> None:
    Collect.seen = []
    async with hookbus.transaction() as tx:
        tx.accumulate("ids", 1, Collect)
        tx.accumulate_many("ids", range(2, 5), Collect)
        tx.accumulate_many("order", ["b", "a", "b"], Collect, container=list)
        with pytest.raises(TypeError, match="accumulates into"):
            tx.accumulate_many("ids", [9], Logs)  # type: ignore[arg-type]
    assert Collect.seen == [{1, 2, 3, 4}, ["b", "a", "b"]]
    with pytest.raises(hookbus.TransactionStateError):
        tx.accumulate_many("ids", [5], Collect)


async def test_accumulate_many_inside_a_rolled_back_savepoint_leaves_nothing() -> None:
    Collect.seen = []
    async with hookbus.transaction() as tx:
        tx.accumulate_many("ids", [1, 2], Collect)
        with pytest.raises(KeyError):
            async with tx.savepoint():
                tx.accumulate_many("ids", [2, 3, 4], Collect)
                raise KeyError("undo")
    assert Collect.seen == [{1, 2}]


class AppendOnly:
    """A container with append() and no extend(): accumulate_many feeds it value by value."""

    def __init__(self) -> None:
        self.items: list[object] = []

    def append(self, value: object) -> None:
        self.items.append(value)


@dataclasses.dataclass(frozen=True)
class CollectInto:
    """A factory of ``Collect``; two made alike are equal, not the same object."""

    def __call__(self) -> Collect:
        return Collect()


async def test_accumulate_many_feeds_a_container_without_extend_through_an_equal_factory() -> None:
    Collect.seen = []
    async with hookbus.transaction() as tx:
        tx.accumulate_many("k", iter([1, 2]), CollectInto(), container=AppendOnly)
        tx.accumulate_many("k", iter([3]), CollectInto(), container=AppendOnly)  # equal
        message = r"^key 'k' accumulates into CollectInto\(\), not Logs$"
        with pytest.raises(TypeError, match=message):
            tx.accumulate_many("k", [9], Logs)  # type: ignore[arg-type]
    (values,) = Collect.seen
    assert isinstance(values, AppendOnly) and values.items == [1, 2, 3]


async def test_accumulate_many_inside_a_released_savepoint_feeds_one_operation() -> None:
    Collect.seen = []
    async with hookbus.transaction() as tx:
        async with tx.savepoint():
            tx.accumulate_many("ids", [1, 2], Collect, container=list)  # opened in there
            tx.accumulate_many("ids", [2, 3], Collect, container=list)
        tx.accumulate("ids", 4, Collect, container=list)
    assert Collect.seen == [[1, 2, 2, 3, 4]]


async def test_tasks_of_one_scope_that_begin_it_at_once_send_one_begin() -> None:
    gate = anyio.Event()

    class Slow(Flushing):
        async def begin(self) -> None:
            await gate.wait()
            await super().begin()

    backend = Slow()
    async with hookbus.transaction(backend) as tx, anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(tx.begin)
        await anyio.wait_all_tasks_blocked()
        gate.set()
    assert backend.log == ["BEGIN", "flush", "COMMIT", "close"]


# -- what fails the commit -------------------------------------------------------------------


async def test_a_prepare_that_fails_with_no_operation_fails_the_scope_with_its_own_error() -> None:
    backend = Flushing(flush_error=ValueError("flush failed"))
    with pytest.raises(ValueError, match="flush failed"):
        async with hookbus.transaction(backend) as tx:
            await tx.begin()
    assert backend.log == ["BEGIN", "flush", "ROLLBACK", "close"]


class CancelsItself(Recorded):
    """A precommit that raises CancelledError though nobody cancelled the scope's task."""

    async def precommit(self) -> None:
        await super().precommit()
        raise asyncio.CancelledError

    def __repr__(self) -> str:
        return f"<CancelsItself {self.name}>"


async def test_a_precommit_that_raises_cancelled_error_on_its_own_is_named_in_the_error() -> None:
    log: list[str] = []
    message = (
        r"^precommit of <CancelsItself b> raised CancelledError although the scope was not "
        r"cancelled; the scope rolled back and committed nothing$"
    )
    with pytest.raises(hookbus.TransactionAbortedError, match=message):
        async with hookbus.transaction() as tx:
            tx.add(Recorded(log, "a"))
            tx.add(CancelsItself(log, "b"))
    assert log == [
        *("a.precommit", "b.precommit"),
        *("b.revertprecommit", "a.revertprecommit"),
        *("a.rollback", "b.rollback"),
    ]


class CommitLost(Flushing):
    """COMMIT fails before the server answered (the driver raised)."""

    async def commit(self) -> CommitOutcome:
        self.log.append("COMMIT (failed)")
        raise ConnectionResetError("COMMIT failed")


async def test_a_commit_that_raises_sends_no_rollback_and_runs_the_rollback_operations() -> None:
    backend, log = CommitLost(), list[str]()
    with pytest.raises(ConnectionResetError, match="COMMIT failed"):
        async with hookbus.transaction(backend) as tx:
            await tx.begin()
            tx.add(Logs(log, "a", backend))
    assert backend.log == ["BEGIN", "precommit", "flush", "COMMIT (failed)", "close", "rollback"]
    assert tx.state is TransactionState.ROLLED_BACK


class CommitAborted(Flushing):
    """The server answers COMMIT with ROLLBACK (a statement failed and its error was caught)."""

    async def commit(self) -> CommitOutcome:
        self.log.append("COMMIT (aborted)")
        return CommitOutcome.ABORTED


async def test_a_commit_answered_with_rollback_says_so_and_sends_no_rollback() -> None:
    backend, log = CommitAborted(), list[str]()
    message = (
        r"^the database answered COMMIT with ROLLBACK: a statement failed inside the scope and "
        r"its error was caught, which aborted the transaction; nothing was committed and the "
        r"rollback operations ran$"
    )
    with pytest.raises(hookbus.TransactionAbortedError, match=message):
        async with hookbus.transaction(backend) as tx:
            await tx.begin()
            tx.add(Logs(log, "a", backend))
    assert backend.log == ["BEGIN", "precommit", "flush", "COMMIT (aborted)", "close", "rollback"]


async def test_a_doomed_scope_raises_its_error_with_a_note_that_nothing_was_committed() -> None:
    doom = LookupError("doomed")
    with pytest.raises(LookupError) as raised:
        async with hookbus.transaction() as tx:
            tx.doom(doom)
    assert raised.value is doom
    assert doom.__notes__ == [
        "raised at the end of the transaction scope, which it had doomed (tx.doom()): "
        "the scope rolled back and committed nothing"
    ]


def test_a_transaction_subclass_may_not_override_the_scheduling_calls() -> None:
    message = (
        r"\.Custom cannot override add, mark_added: while the scope is open, its ledger serves "
        r"these calls directly \(they are slots\)$"
    )
    with pytest.raises(TypeError, match=message):

        class Custom(hookbus.Transaction):
            def add(self, op: hookbus.Operation) -> None: ...

            def mark_added(self, eid: object) -> None: ...
