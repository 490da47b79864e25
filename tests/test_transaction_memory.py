"""The transaction lifecycle on the in-memory backend: no database needed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio
import pytest
from _recording import LastRecorded, LateRecorded, Recorded

import hookbus
from hookbus import (
    CommitOutcome,
    MemoryBackend,
    TransactionAbortedError,
    TransactionState,
    TransactionStateError,
    ValidationError,
)


class Collect(hookbus.Operation):
    """Accumulates values; records what it saw at precommit."""

    seen: list[Any] = []  # noqa: RUF012  (reset by each test that reads it)

    async def precommit(self) -> None:
        Collect.seen.append(self.values)


async def test_commit_runs_precommit_then_postcommit_in_order() -> None:
    log: list[str] = []
    async with hookbus.transaction() as tx:
        tx.add(Recorded(log, "a"))
        tx.add(Recorded(log, "b"))
        assert tx.state is TransactionState.ACTIVE
    assert log == ["a.precommit", "b.precommit", "a.postcommit", "b.postcommit"]
    assert tx.state is TransactionState.COMMITTED
    assert isinstance(tx.backend, MemoryBackend)
    assert tx.backend.statements == ["BEGIN", "COMMIT"]


async def test_constructing_an_operation_schedules_nothing() -> None:
    log: list[str] = []
    async with hookbus.transaction() as tx:
        Recorded(log, "a")
    assert log == []
    assert tx.operations == ()


async def test_operations_added_in_precommit_run_in_that_phase_before_late_ones() -> None:
    log: list[str] = []

    class Spawner(Recorded):
        async def precommit(self) -> None:
            await super().precommit()
            hookbus.current_transaction().add(Recorded(log, "spawned"))

    async with hookbus.transaction() as tx:
        tx.add(LastRecorded(log, "last-1"))
        tx.add(LateRecorded(log, "late"))
        tx.add(Spawner(log, "spawner"))
        tx.add(LastRecorded(log, "last-2"))  # replaces last-1
    pre = [entry for entry in log if entry.endswith(".precommit")]
    assert pre == ["spawner.precommit", "spawned.precommit", "late.precommit", "last-2.precommit"]
    assert "last-1.precommit" not in log
    assert log.count("last-2.postcommit") == 1


async def test_a_hundred_thousand_accumulate_calls_make_one_operation() -> None:
    Collect.seen = []
    async with hookbus.transaction() as tx:
        for i in range(100_000):
            tx.accumulate("rows", i, Collect)
        tx.accumulate("ordered", "x", Collect, container=list)
        tx.accumulate("ordered", "x", Collect, container=list)
    assert len(tx.operations) == 2
    assert Collect.seen[0] == set(range(100_000))
    assert Collect.seen[1] == ["x", "x"]


async def test_accumulate_refuses_another_class_under_the_same_key() -> None:
    async with hookbus.transaction() as tx:
        tx.accumulate("k", 1, Collect)
        with pytest.raises(TypeError, match="accumulates into Collect"):
            tx.accumulate("k", 2, Recorded)


@pytest.mark.parametrize("exc", [ValidationError(1, {"age": "bad"}), RuntimeError("boom")])
async def test_precommit_raises_reverts_those_that_ran_then_rolls_back(exc: Exception) -> None:
    log: list[str] = []
    with pytest.raises(type(exc)) as raised:
        async with hookbus.transaction() as tx:
            tx.add(Recorded(log, "a"))
            tx.add(Recorded(log, "b", fail="precommit", exc=exc))
            tx.add(Recorded(log, "c"))
    assert raised.value is exc
    assert log == [
        "a.precommit",
        "b.precommit",
        "b.revertprecommit",
        "a.revertprecommit",
        "a.rollback",
        "b.rollback",
        "c.rollback",
    ]
    assert tx.backend.statements == ["BEGIN", "ROLLBACK"]  # type: ignore[attr-defined]
    assert tx.state is TransactionState.ROLLED_BACK


async def test_commit_refused_runs_the_rollback_path_without_sending_rollback() -> None:
    log: list[str] = []
    error = RuntimeError("deferred constraint violated")
    backend = MemoryBackend(commit_error=error)
    with pytest.raises(RuntimeError) as raised:
        async with hookbus.transaction(backend) as tx:
            tx.add(Recorded(log, "a"))
    assert raised.value is error
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]
    assert backend.statements == ["BEGIN", "COMMIT"]
    assert tx.state is TransactionState.ROLLED_BACK


async def test_commit_answered_with_rollback_raises_aborted_and_never_postcommits() -> None:
    log: list[str] = []
    backend = MemoryBackend(commit_outcome=CommitOutcome.ABORTED)
    with pytest.raises(TransactionAbortedError, match="answered COMMIT with ROLLBACK"):
        async with hookbus.transaction(backend) as tx:
            tx.add(Recorded(log, "a"))
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]


async def test_postcommit_errors_are_logged_and_counted_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    with caplog.at_level(logging.ERROR, logger="hookbus"):
        async with hookbus.transaction() as tx:
            tx.add(Recorded(log, "a", fail="postcommit"))
            tx.add(Recorded(log, "b"))
    assert log == ["a.precommit", "b.precommit", "a.postcommit", "b.postcommit"]
    assert tx.postcommit_errors == 1
    assert tx.state is TransactionState.COMMITTED
    assert "postcommit of" in caplog.text and "a failed in postcommit" in caplog.text


async def test_body_exception_rolls_back_and_propagates() -> None:
    log: list[str] = []
    with pytest.raises(KeyError):
        async with hookbus.transaction() as tx:
            tx.add(Recorded(log, "a"))
            raise KeyError("body")
    assert log == ["a.rollback"]
    assert tx.backend.statements == ["BEGIN", "ROLLBACK"]  # type: ignore[attr-defined]


async def test_explicit_rollback_finishes_the_scope() -> None:
    log: list[str] = []
    async with hookbus.transaction() as tx:
        tx.add(Recorded(log, "a"))
        await tx.rollback()
        with pytest.raises(TransactionStateError, match="rolled back"):
            tx.add(Recorded(log, "late"))
        with pytest.raises(TransactionStateError):
            await tx.rollback()
    assert log == ["a.rollback"]
    assert tx.backend.statements == ["BEGIN", "ROLLBACK"]  # type: ignore[attr-defined]


async def test_errors_in_revertprecommit_and_rollback_never_mask_the_original(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    original = ValidationError(7, {None: "refused"})
    with pytest.raises(ValidationError) as raised:
        async with hookbus.transaction() as tx:
            tx.add(Recorded(log, "a", fail="revertprecommit"))
            tx.add(Recorded(log, "b", fail="rollback"))
            tx.add(Recorded(log, "c", fail="precommit", exc=original))
    assert raised.value is original
    assert log[-3:] == ["a.rollback", "b.rollback", "c.rollback"]
    assert "revertprecommit of" in caplog.text and "rollback of" in caplog.text


async def test_current_transaction_is_found_below_and_refused_outside() -> None:
    with pytest.raises(TransactionStateError, match="no transaction scope"):
        hookbus.current_transaction()
    async with hookbus.transaction() as tx:
        assert hookbus.current_transaction() is tx

        async def child() -> hookbus.Transaction:
            return hookbus.current_transaction()

        assert await asyncio.create_task(child()) is tx
        hookbus.transaction_data()["k"] = 1
        tx.mark_added(10)
        tx.mark_deleted(11)
        assert hookbus.added_in_transaction(10) and not hookbus.added_in_transaction(11)
        assert hookbus.deleted_in_transaction(11)
    assert tx.data == {"k": 1}
    with pytest.raises(TransactionStateError, match="committed"):
        tx.add(hookbus.Operation())
    with pytest.raises(TransactionStateError):
        hookbus.current_transaction()


async def test_a_scope_is_entered_once() -> None:
    tx = hookbus.transaction()
    async with tx:
        pass
    with pytest.raises(TransactionStateError, match="enter the scope again"):
        async with tx:
            pass


async def test_savepoint_rolled_back_drops_its_work_and_released_keeps_it() -> None:
    log: list[str] = []
    Collect.seen = []
    async with hookbus.transaction() as tx:
        tx.add(Recorded(log, "outer"))
        tx.accumulate("k", 1, Collect)
        tx.mark_added(1)
        with pytest.raises(ValueError):
            async with tx.savepoint():
                tx.add(Recorded(log, "dropped"))
                tx.accumulate("k", 1, Collect)  # already there: stays after the rollback
                tx.accumulate("k", 2, Collect)
                tx.accumulate("new", 9, Collect)
                tx.mark_added(2)
                tx.mark_deleted(1)
                async with tx.savepoint():  # released into the outer savepoint, then undone
                    tx.add(Recorded(log, "inner"))
                raise ValueError("undo")
        assert log == ["dropped.rollback", "inner.rollback"]  # in scheduling order
        assert tx.added(1) and not tx.added(2) and not tx.deleted(1)
        async with tx.savepoint():
            tx.add(Recorded(log, "kept"))
            tx.accumulate("k", 3, Collect)
    assert Collect.seen == [{1, 3}]
    assert [e for e in log if e.endswith("postcommit")] == ["outer.postcommit", "kept.postcommit"]
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


class GatedBackend:
    """A backend whose COMMIT waits for ``gate``: a COMMIT in flight, without a database."""

    def __init__(self) -> None:
        self.memory = MemoryBackend()
        self.in_commit = asyncio.Event()
        self.gate = asyncio.Event()
        self.committed = False

    async def begin(self) -> None:
        await self.memory.begin()

    async def commit(self) -> CommitOutcome:
        self.in_commit.set()
        await self.gate.wait()
        self.committed = True
        return await self.memory.commit()

    async def rollback(self) -> None:
        await self.memory.rollback()

    async def savepoint(self, name: str) -> None:
        await self.memory.savepoint(name)

    async def release(self, name: str) -> None:
        await self.memory.release(name)

    async def rollback_to(self, name: str) -> None:
        await self.memory.rollback_to(name)


async def test_cancelled_in_the_body_still_rolls_back() -> None:
    log: list[str] = []
    entered = asyncio.Event()

    async def scope() -> None:
        async with hookbus.transaction() as tx:
            tx.add(Recorded(log, "a"))
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(scope())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["a.rollback"]


async def test_cancelled_while_commit_in_flight_commits_then_propagates() -> None:
    log: list[str] = []
    backend = GatedBackend()

    async def scope() -> None:
        async with hookbus.transaction(backend) as tx:
            tx.add(Recorded(log, "a"))

    task = asyncio.create_task(scope())
    await backend.in_commit.wait()
    task.cancel()
    await asyncio.sleep(0)  # let the cancellation reach the task before the COMMIT ends
    backend.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.committed
    assert log == ["a.precommit", "a.postcommit"]


async def test_anyio_cancel_scope_while_commit_in_flight_commits_then_propagates() -> None:
    log: list[str] = []
    backend = GatedBackend()
    async with anyio.create_task_group() as tg:

        async def scope() -> None:
            async with hookbus.transaction(backend) as tx:
                tx.add(Recorded(log, "a"))
            log.append("not reached")

        tg.start_soon(scope)
        await backend.in_commit.wait()
        tg.cancel_scope.cancel()
        backend.gate.set()
    assert log == ["a.precommit", "a.postcommit"]


async def test_cancelled_in_precommit_reverts_and_rolls_back() -> None:
    log: list[str] = []
    started = asyncio.Event()

    class Blocking(Recorded):
        async def precommit(self) -> None:
            await super().precommit()
            started.set()
            await asyncio.Event().wait()

    async def scope() -> None:
        async with hookbus.transaction() as tx:
            tx.add(Blocking(log, "a"))

    task = asyncio.create_task(scope())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]


async def test_scheduling_refuses_what_is_not_an_operation() -> None:
    class Check(hookbus.Operation):
        async def precommit(self) -> None: ...

    async with hookbus.transaction() as tx:
        with pytest.raises(TypeError, match="Operation instance"):
            tx.add(Check)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="add\\(\\) or append\\(\\)"):
            tx.accumulate("k", 1, Check, container=dict)
        with pytest.raises(TypeError, match="not an Operation"):
            tx.accumulate("k", 1, object)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="Operation factory"):
            tx.accumulate("k", 1, "Check")  # type: ignore[arg-type]
        assert tx.operations == ()


def test_an_operation_phase_must_be_async() -> None:
    with pytest.raises(TypeError, match=r"Notify.postcommit must be an async def"):

        class Notify(hookbus.Operation):
            def postcommit(self) -> None:  # type: ignore[override]
                pass


async def test_a_task_that_outlives_its_scope_cannot_schedule_into_it() -> None:
    go_on = asyncio.Event()

    async def straggler() -> None:
        await go_on.wait()
        hookbus.current_transaction().add(hookbus.Operation())

    async with hookbus.transaction() as tx:
        task = asyncio.create_task(straggler())
    assert tx.state is TransactionState.COMMITTED
    go_on.set()
    with pytest.raises(TransactionStateError, match="the transaction scope is committed"):
        await task
    assert tx.operations == ()


async def test_accumulate_takes_a_factory_returning_an_operation() -> None:
    import functools

    seen: list[Any] = []

    class Tagged(hookbus.Operation):
        def __init__(self, tag: str) -> None:
            super().__init__()
            self.tag = tag

        async def precommit(self) -> None:
            seen.append((self.tag, self.values))

    factory = functools.partial(Tagged, "a")
    async with hookbus.transaction() as tx:
        tx.accumulate("k", 1, factory)
        tx.accumulate("k", 2, factory)
        tx.accumulate("j", 3, lambda: Tagged("b"), container=list)
        with pytest.raises(TypeError, match="accumulates into"):
            tx.accumulate("k", 3, functools.partial(Tagged, "a"))
        with pytest.raises(TypeError, match="not an Operation"):
            tx.accumulate("bad", 1, object)  # type: ignore[arg-type]
    assert seen == [("a", {1, 2}), ("b", [3])]


async def test_a_doomed_scope_rolls_back_and_raises_its_first_error() -> None:
    log: list[str] = []
    first, second = RuntimeError("first"), RuntimeError("second")
    with pytest.raises(RuntimeError) as raised:
        async with hookbus.transaction() as tx:
            tx.add(Recorded(log, "a"))
            tx.doom(first)
            tx.doom(second)
            assert tx.doomed is first
    assert raised.value is first
    assert any("doomed" in note for note in first.__notes__)
    assert log == ["a.rollback"]
    assert tx.state is TransactionState.ROLLED_BACK
    assert isinstance(tx.backend, MemoryBackend)
    assert tx.backend.statements == ["BEGIN", "ROLLBACK"]


async def test_a_doom_inside_a_rolled_back_savepoint_is_undone() -> None:
    log: list[str] = []
    async with hookbus.transaction() as tx:
        tx.add(Recorded(log, "a"))
        with pytest.raises(KeyError):
            async with tx.savepoint():
                tx.doom(KeyError("x"))
                raise KeyError("x")
        assert tx.doomed is None
        async with tx.savepoint():
            pass
    assert log == ["a.precommit", "a.postcommit"]


async def test_a_doom_inside_a_released_savepoint_stays() -> None:
    error = ValueError("kept")
    with pytest.raises(ValueError):
        async with hookbus.transaction() as tx, tx.savepoint():
            tx.doom(error)
    assert tx.state is TransactionState.ROLLED_BACK


async def test_a_precommit_that_dooms_the_scope_reverts_and_rolls_back() -> None:
    log: list[str] = []
    error = RuntimeError("late failure")

    class Dooming(Recorded):
        async def precommit(self) -> None:
            await super().precommit()
            hookbus.current_transaction().doom(error)

    with pytest.raises(RuntimeError) as raised:
        async with hookbus.transaction() as tx:
            tx.add(Dooming(log, "d"))
            tx.add(Recorded(log, "b"))
    assert raised.value is error
    assert log == ["d.precommit", "d.revertprecommit", "d.rollback", "b.rollback"]
