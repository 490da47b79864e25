"""The in-memory backend: the statements a scope sends, and cancellations at set moments.

The lifecycle common to every backend is in ``test_lifecycle.py``.
"""

from __future__ import annotations

import asyncio

import anyio
import pytest
from _recording import Recorded

import hookbus
from hookbus import CommitOutcome, MemoryBackend, TransactionState, TransactionStateError


async def test_the_statements_of_a_commit_a_rollback_and_a_refused_commit() -> None:
    async with hookbus.transaction() as tx:
        await tx.begin()  # what a first statement does
    assert isinstance(tx.backend, MemoryBackend)
    assert tx.backend.statements == ["BEGIN", "COMMIT"]

    with pytest.raises(KeyError):
        async with hookbus.transaction() as tx:
            await tx.begin()
            raise KeyError("body")
    assert tx.backend.statements == ["BEGIN", "ROLLBACK"]  # type: ignore[attr-defined]

    refused = MemoryBackend(commit_error=RuntimeError("deferred constraint violated"))
    with pytest.raises(RuntimeError):
        async with hookbus.transaction(refused) as tx:
            await tx.begin()
    assert refused.statements == ["BEGIN", "COMMIT"]  # the server rolled back: no ROLLBACK

    with pytest.raises(ValueError):
        async with hookbus.transaction() as tx:
            await tx.begin()
            tx.doom(ValueError("doomed"))
    assert tx.backend.statements == ["BEGIN", "ROLLBACK"]  # type: ignore[attr-defined]


async def test_a_scope_that_never_begins_sends_nothing_and_runs_its_operations() -> None:
    log: list[str] = []
    async with hookbus.transaction() as tx:
        tx.add(Recorded(log, "a"))
    assert tx.backend.statements == []  # type: ignore[attr-defined]
    assert tx.state is TransactionState.COMMITTED and tx.begun is False
    assert repr(tx) == f"<Transaction committed at {id(tx):#x}>"
    assert log == ["a.precommit", "a.postcommit"]

    log.clear()
    with pytest.raises(KeyError):
        async with hookbus.transaction() as tx:
            tx.add(Recorded(log, "a"))
            raise KeyError("body")
    assert tx.backend.statements == []  # type: ignore[attr-defined]
    assert log == ["a.rollback"]

    log.clear()
    async with hookbus.transaction() as tx:
        tx.add(Recorded(log, "a"))
        await tx.rollback()
    assert tx.backend.statements == []  # type: ignore[attr-defined]
    assert log == ["a.rollback"]


async def test_a_precommit_can_begin_the_scope() -> None:
    class Begins(hookbus.Operation):
        async def precommit(self) -> None:
            await hookbus.current_transaction().begin()

    async with hookbus.transaction() as tx:
        tx.add(Begins())
    assert tx.backend.statements == ["BEGIN", "COMMIT"]  # type: ignore[attr-defined]


async def test_a_failed_begin_leaves_the_scope_unbegun_and_open() -> None:
    class Unreachable:
        """A lazy backend whose BEGIN fails until ``up``."""

        lazy = True

        def __init__(self) -> None:
            self.up = False
            self.memory = MemoryBackend()

        async def begin(self) -> None:
            if not self.up:
                raise ConnectionError("no server")
            await self.memory.begin()

        async def commit(self) -> CommitOutcome:
            return await self.memory.commit()

        async def rollback(self) -> None:
            await self.memory.rollback()

        async def savepoint(self, name: str) -> None: ...
        async def release(self, name: str) -> None: ...
        async def rollback_to(self, name: str) -> None: ...

    log: list[str] = []
    backend = Unreachable()
    async with hookbus.transaction(backend) as tx:
        tx.add(Recorded(log, "a"))
        with pytest.raises(ConnectionError):
            await tx.begin()  # the first statement fails to begin: nothing began
        assert tx.state is TransactionState.ACTIVE and not tx.begun
        backend.up = True
        await tx.begin()  # the next statement begins it
    assert backend.memory.statements == ["BEGIN", "COMMIT"]
    assert log == ["a.precommit", "a.postcommit"]


async def test_the_statements_of_nested_savepoints() -> None:
    async with hookbus.transaction() as tx:
        with pytest.raises(ValueError):
            async with tx.savepoint():
                async with tx.savepoint():
                    await tx.begin()  # a first statement: BEGIN, then the savepoints waiting
                raise ValueError("undo")
        async with tx.savepoint():
            pass
    assert tx.backend.statements == [  # type: ignore[attr-defined]
        "BEGIN",
        "SAVEPOINT hookbus_sp_1",
        "SAVEPOINT hookbus_sp_2",
        "RELEASE SAVEPOINT hookbus_sp_2",
        "ROLLBACK TO SAVEPOINT hookbus_sp_1",
        "SAVEPOINT hookbus_sp_3",
        "RELEASE SAVEPOINT hookbus_sp_3",
        "COMMIT",
    ]


async def test_a_scope_is_entered_once() -> None:
    tx = hookbus.transaction()
    async with tx:
        pass
    with pytest.raises(TransactionStateError, match="enter the scope again"):
        async with tx:
            pass


class GatedBackend:
    """A backend whose ``gated`` statement waits for ``gate``: a statement in flight."""

    def __init__(self, gated: str) -> None:
        self.memory = MemoryBackend()
        self.gated = gated
        self.waiting = asyncio.Event()
        self.gate = asyncio.Event()
        self.done: list[str] = []

    async def _wait(self, statement: str) -> None:
        if statement == self.gated:
            self.waiting.set()
            await self.gate.wait()
        self.done.append(statement)

    async def begin(self) -> None:
        await self.memory.begin()

    async def commit(self) -> CommitOutcome:
        await self._wait("commit")
        return await self.memory.commit()

    async def rollback(self) -> None:
        await self.memory.rollback()

    async def savepoint(self, name: str) -> None:
        await self._wait("savepoint")
        await self.memory.savepoint(name)

    async def release(self, name: str) -> None:
        await self._wait("release")
        await self.memory.release(name)

    async def rollback_to(self, name: str) -> None:
        await self._wait("rollback_to")
        await self.memory.rollback_to(name)


async def test_cancelled_while_commit_in_flight_commits_then_propagates() -> None:
    log: list[str] = []
    backend = GatedBackend("commit")

    async def scope() -> None:
        async with hookbus.transaction(backend) as tx:
            tx.add(Recorded(log, "a"))

    task = asyncio.create_task(scope())
    await backend.waiting.wait()
    task.cancel()
    await asyncio.sleep(0)  # let the cancellation reach the task before the COMMIT ends
    backend.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.done == ["commit"]
    assert log == ["a.precommit", "a.postcommit"]


async def test_anyio_cancel_scope_while_commit_in_flight_commits_then_propagates() -> None:
    log: list[str] = []
    backend = GatedBackend("commit")
    async with anyio.create_task_group() as tg:

        async def scope() -> None:
            async with hookbus.transaction(backend) as tx:
                tx.add(Recorded(log, "a"))
            log.append("not reached")

        tg.start_soon(scope)
        await backend.waiting.wait()
        tg.cancel_scope.cancel()
        backend.gate.set()
    assert log == ["a.precommit", "a.postcommit"]


class GatedBegin(GatedBackend):
    """A backend that begins lazily, whose BEGIN waits for ``gate``."""

    lazy = True

    async def begin(self) -> None:
        await self._wait("begin")
        await self.memory.begin()


async def test_a_begin_that_ends_after_its_scope_is_refused() -> None:
    # A task the block started is sending BEGIN when the block ends: the scope, not begun,
    # commits nothing; the task's statement is refused, and the scope never counts as begun.
    log: list[str] = []
    backend = GatedBegin("begin")
    async with hookbus.transaction(backend) as tx:
        tx.add(Recorded(log, "a"))
        late = asyncio.create_task(tx.begin())
        await backend.waiting.wait()
    assert tx.state is TransactionState.COMMITTED and not tx.begun
    backend.gate.set()
    with pytest.raises(TransactionStateError, match=r"cannot begin.* scope is committed"):
        await late
    assert not tx.begun
    assert log == ["a.precommit", "a.postcommit"]


@pytest.mark.parametrize("gated", ["savepoint", "release", "rollback_to"])
async def test_a_timeout_during_a_savepoint_statement_waits_for_its_answer(gated: str) -> None:
    log: list[str] = []
    backend = GatedBackend(gated)
    async with hookbus.transaction(backend) as tx:
        tx.add(Recorded(log, "outer"))

        async def savepoint() -> None:
            async with tx.savepoint():
                tx.add(Recorded(log, "inner"))
                if gated == "rollback_to":
                    raise KeyError("rolled back")

        task = asyncio.create_task(savepoint())
        await backend.waiting.wait()
        task.cancel()
        await asyncio.sleep(0)  # the cancellation arrives while the statement runs
        backend.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gated in backend.done  # the statement ran to its answer
    assert tx.state is TransactionState.COMMITTED
    if gated == "release":  # released: what it did stays
        assert log == ["outer.precommit", "inner.precommit", "outer.postcommit", "inner.postcommit"]
    elif gated == "savepoint":  # the block never ran; the savepoint set is released
        assert log == ["outer.precommit", "outer.postcommit"]
        assert "RELEASE SAVEPOINT hookbus_sp_1" in backend.memory.statements
    else:
        assert log == ["inner.rollback", "outer.precommit", "outer.postcommit"]


async def test_savepoints_before_the_first_statement_send_nothing() -> None:
    rolled_back: list[str] = []

    class Undone(hookbus.Operation):
        async def rollback(self) -> None:
            rolled_back.append("undone")

    async with hookbus.transaction() as tx:
        with pytest.raises(ValueError):
            async with tx.savepoint():
                tx.add(Undone())
                tx.mark_added(1)
                async with tx.savepoint():
                    tx.mark_added(2)
                raise ValueError("undo")
        async with tx.savepoint():
            tx.mark_added(3)
        assert rolled_back == ["undone"] and tx.operations == ()
        assert (tx.added(1), tx.added(2), tx.added(3)) == (False, False, True)
        assert not tx.begun
    assert tx.backend.statements == []  # type: ignore[attr-defined]


async def test_a_waiting_savepoint_that_fails_after_begin_is_never_rolled_back_to() -> None:
    class LostAtSavepoint(MemoryBackend):
        async def savepoint(self, name: str) -> None:
            await super().savepoint(name)
            raise ConnectionResetError("the connection dropped")

    backend = LostAtSavepoint()
    async with hookbus.transaction(backend) as tx:
        with pytest.raises(ConnectionResetError):
            async with tx.savepoint():
                tx.mark_added(1)
                await tx.begin()  # BEGIN, then the savepoint waiting, which fails
        assert tx.begun and not tx.added(1)
    assert backend.statements == ["BEGIN", "SAVEPOINT hookbus_sp_1", "COMMIT"]
