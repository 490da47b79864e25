"""The lifecycle of a transaction scope, run once per backend (memory, asyncpg).

The ``backend`` fixture gives a ``Harness``: a scope, a row written in it, the rows
committed, and the ways to make COMMIT fail. The in-memory backend keeps its table in a
list that follows BEGIN, COMMIT and savepoints; the asyncpg one is a real PostgreSQL table.
What only one backend can show stays in ``test_transaction_memory.py`` and
``test_transaction_asyncpg.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import anyio
import asyncpg
import hookbus_asyncpg
import pytest
import pytest_asyncio
from _postgres import assert_pool_hands_out_everything
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

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY);
CREATE TABLE IF NOT EXISTS parent (id int PRIMARY KEY);
CREATE TABLE IF NOT EXISTS child (
    id int PRIMARY KEY,
    parent_id int REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED
);
TRUNCATE items, child, parent;
"""


# -- the backends ---------------------------------------------------------------------------


class Harness(Protocol):
    """What a lifecycle test needs of a backend."""

    name: str

    def transaction(self) -> contextlib.AbstractAsyncContextManager[hookbus.Transaction]:
        """A new scope on this backend, to enter with ``async with``."""
        ...

    async def write(self, tx: hookbus.Transaction, row: int) -> None:
        """Write ``row`` in the scope ``tx``."""
        ...

    async def rows(self) -> list[int]:
        """The rows committed, sorted."""
        ...

    async def refuse_commit(self, tx: hookbus.Transaction) -> type[BaseException]:
        """Make the server refuse the COMMIT of ``tx``; return the error it will raise."""
        ...

    async def swallow_an_error(self, tx: hookbus.Transaction) -> None:
        """Fail a statement in ``tx`` and catch its error: the server aborts at COMMIT."""
        ...


class TableBackend:
    """The in-memory backend, plus one table that follows BEGIN, COMMIT and savepoints."""

    lazy = True  # begun by the harness's write (a statement), as the asyncpg scope is

    def __init__(self, table: list[int]) -> None:
        self.memory = MemoryBackend()
        self.table = table
        self.pending: list[int] = []
        self.marks: dict[str, int] = {}

    async def begin(self) -> None:
        await self.memory.begin()

    async def commit(self) -> CommitOutcome:
        outcome = await self.memory.commit()
        if outcome is CommitOutcome.COMMITTED:
            self.table.extend(self.pending)
        return outcome

    async def rollback(self) -> None:
        await self.memory.rollback()

    async def savepoint(self, name: str) -> None:
        await self.memory.savepoint(name)
        self.marks[name] = len(self.pending)

    async def release(self, name: str) -> None:
        await self.memory.release(name)

    async def rollback_to(self, name: str) -> None:
        await self.memory.rollback_to(name)
        del self.pending[self.marks[name] :]


class MemoryHarness:
    name = "memory"

    def __init__(self) -> None:
        self.table: list[int] = []

    def transaction(self) -> hookbus.Transaction:
        return hookbus.transaction(TableBackend(self.table))

    async def write(self, tx: hookbus.Transaction, row: int) -> None:
        assert isinstance(tx.backend, TableBackend)
        await tx.begin()  # a statement begins the scope, as the asyncpg connection's does
        tx.backend.pending.append(row)

    async def rows(self) -> list[int]:
        return sorted(self.table)

    async def refuse_commit(self, tx: hookbus.Transaction) -> type[BaseException]:
        assert isinstance(tx.backend, TableBackend)
        await tx.begin()
        tx.backend.memory.commit_error = RuntimeError("deferred constraint violated")
        return RuntimeError

    async def swallow_an_error(self, tx: hookbus.Transaction) -> None:
        assert isinstance(tx.backend, TableBackend)
        await tx.begin()
        tx.backend.memory.commit_outcome = CommitOutcome.ABORTED


class AsyncpgHarness:
    name = "asyncpg"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    def transaction(self) -> contextlib.AbstractAsyncContextManager[hookbus.Transaction]:
        return hookbus_asyncpg.transaction(self.pool)

    async def write(self, tx: hookbus.Transaction, row: int) -> None:
        await connection(tx).execute("INSERT INTO items VALUES ($1)", row)

    async def rows(self) -> list[int]:
        return [r[0] for r in await self.pool.fetch("SELECT id FROM items ORDER BY id")]

    async def refuse_commit(self, tx: hookbus.Transaction) -> type[BaseException]:
        await connection(tx).execute("INSERT INTO child VALUES (1, 999)")
        return asyncpg.ForeignKeyViolationError

    async def swallow_an_error(self, tx: hookbus.Transaction) -> None:
        conn = connection(tx)
        await conn.execute("INSERT INTO items VALUES (-1) ON CONFLICT DO NOTHING")
        with contextlib.suppress(asyncpg.UniqueViolationError):
            # Swallowed: PostgreSQL has aborted the transaction all the same.
            await conn.execute("INSERT INTO items VALUES (-1)")


def connection(tx: hookbus.Transaction) -> asyncpg.Connection:
    assert isinstance(tx, hookbus_asyncpg.AsyncpgTransaction)
    return tx.connection


@pytest_asyncio.fixture
async def items(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """The pool, on empty tables; checked intact afterwards."""
    await pool.execute(SCHEMA)
    yield pool
    await assert_pool_hands_out_everything(pool)


@pytest.fixture(params=["memory", "asyncpg"])
def backend(request: pytest.FixtureRequest) -> Harness:
    """Each lifecycle test runs once per backend."""
    if request.param == "memory":
        return MemoryHarness()
    return AsyncpgHarness(request.getfixturevalue("items"))


class Collect(hookbus.Operation):
    """Records its values at precommit."""

    def __init__(self, seen: list[Any]) -> None:
        super().__init__()
        self.seen = seen

    async def precommit(self) -> None:
        self.seen.append(self.values)


class Writes(Recorded):
    """A recording operation that writes ``row`` at precommit."""

    def __init__(self, log: list[str], name: str, harness: Harness, row: int) -> None:
        super().__init__(log, name)
        self.harness = harness
        self.row = row

    async def precommit(self) -> None:
        await self.harness.write(hookbus.current_transaction(), self.row)
        await super().precommit()


# -- commit ---------------------------------------------------------------------------------


async def test_commit_runs_precommit_then_postcommit_in_order(backend: Harness) -> None:
    log: list[str] = []
    async with backend.transaction() as tx:
        await backend.write(tx, 1)
        tx.add(Recorded(log, "a"))
        tx.add(Recorded(log, "b"))
        assert tx.state is TransactionState.ACTIVE
    assert log == ["a.precommit", "b.precommit", "a.postcommit", "b.postcommit"]
    assert tx.state is TransactionState.COMMITTED
    assert await backend.rows() == [1]


async def test_constructing_an_operation_schedules_nothing(backend: Harness) -> None:
    log: list[str] = []
    async with backend.transaction() as tx:
        Recorded(log, "a")
    assert log == []
    assert tx.operations == ()


async def test_operations_added_in_precommit_run_in_that_phase_before_late_ones(
    backend: Harness,
) -> None:
    log: list[str] = []

    class Spawner(Recorded):
        async def precommit(self) -> None:
            await super().precommit()
            hookbus.current_transaction().add(Recorded(log, "spawned"))

    async with backend.transaction() as tx:
        tx.add(LastRecorded(log, "last-1"))
        tx.add(LateRecorded(log, "late"))
        tx.add(Spawner(log, "spawner"))
        tx.add(LastRecorded(log, "last-2"))  # replaces last-1, still pending
    pre = [entry for entry in log if entry.endswith(".precommit")]
    assert pre == ["spawner.precommit", "spawned.precommit", "late.precommit", "last-2.precommit"]
    assert not any(entry.startswith("last-1") for entry in log)
    assert log.count("last-2.postcommit") == 1


@pytest.mark.parametrize("second_fails", [False, True])
async def test_a_single_last_operation_that_ran_keeps_its_callbacks(
    backend: Harness, second_fails: bool
) -> None:
    log: list[str] = []

    class Reschedules(LastRecorded):
        async def precommit(self) -> None:
            await super().precommit()
            if self.name == "first":  # scheduled again while the first one runs
                fail = "precommit" if second_fails else None
                hookbus.current_transaction().add(Reschedules(log, "second", fail=fail))

    with pytest.raises(RuntimeError) if second_fails else contextlib.nullcontext():
        async with backend.transaction() as tx:
            tx.add(Reschedules(log, "first"))
    if second_fails:
        assert log == [
            "first.precommit",
            "second.precommit",
            "second.revertprecommit",
            "first.revertprecommit",
            "first.rollback",
            "second.rollback",
        ]
    else:
        assert log == [
            "first.precommit",
            "second.precommit",
            "first.postcommit",
            "second.postcommit",
        ]


async def test_a_hundred_thousand_accumulate_calls_make_one_operation(backend: Harness) -> None:
    seen: list[Any] = []
    factory = functools.partial(Collect, seen)
    async with backend.transaction() as tx:
        for i in range(100_000):
            tx.accumulate("rows", i, factory)
        tx.accumulate("ordered", "x", factory, container=list)
        tx.accumulate("ordered", "x", factory, container=list)
    assert len(tx.operations) == 2
    assert seen == [set(range(100_000)), ["x", "x"]]


async def test_accumulate_takes_any_factory_and_refuses_another_under_one_key(
    backend: Harness,
) -> None:
    seen: list[Any] = []
    by_partial = functools.partial(Collect, seen)
    async with backend.transaction() as tx:
        tx.accumulate("k", 1, by_partial)
        tx.accumulate("k", 2, by_partial)
        tx.accumulate("j", 3, lambda: Collect(seen), container=list)
        with pytest.raises(TypeError, match="accumulates into"):
            tx.accumulate("k", 3, functools.partial(Collect, seen))
        with pytest.raises(TypeError, match="not an Operation"):
            tx.accumulate("bad", 1, object)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="Operation factory"):
            tx.accumulate("bad", 1, "Collect")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="add\\(\\) or append\\(\\)"):
            tx.accumulate("bad", 1, by_partial, container=dict)
        tx.accumulate("cls", 1, hookbus.Operation)  # a class is a factory too
    assert seen == [{1, 2}, [3]]


async def test_values_accumulated_after_the_precommit_ran_go_to_a_new_operation(
    backend: Harness,
) -> None:
    seen: list[Any] = []
    log: list[str] = []
    factory = functools.partial(Collect, seen)

    class AccumulatesLate(LateRecorded):
        async def precommit(self) -> None:
            await super().precommit()
            hookbus.current_transaction().accumulate("k", 2, factory)
            hookbus.current_transaction().accumulate("k", 3, factory)

    async with backend.transaction() as tx:
        tx.accumulate("k", 1, factory)
        tx.add(AccumulatesLate(log, "late"))
    assert seen == [{1}, {2, 3}]  # the new one ran before COMMIT
    assert len(tx.operations) == 3
    with pytest.raises(TransactionStateError):
        tx.accumulate("k", 4, factory)


async def test_values_accumulated_by_the_operation_itself_go_to_a_new_one(
    backend: Harness,
) -> None:
    seen: list[Any] = []

    class Chain(hookbus.Operation):
        async def precommit(self) -> None:
            seen.append(sorted(self.values))
            if max(self.values) < 3:
                hookbus.current_transaction().accumulate("k", max(self.values) + 1, Chain)

    async with backend.transaction() as tx:
        tx.accumulate("k", 1, Chain)
    assert seen == [[1], [2], [3]]


# -- precommit, COMMIT and the rollback path ------------------------------------------------


@pytest.mark.parametrize("exc", [ValidationError(1, {"age": "bad"}), RuntimeError("boom")])
async def test_precommit_raises_reverts_those_that_ran_then_rolls_back(
    backend: Harness, exc: Exception
) -> None:
    log: list[str] = []
    with pytest.raises(type(exc)) as raised:
        async with backend.transaction() as tx:
            await backend.write(tx, 1)
            tx.add(Writes(log, "a", backend, 2))
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
    assert tx.state is TransactionState.ROLLED_BACK
    assert await backend.rows() == []


async def test_commit_refused_runs_the_rollback_path(backend: Harness) -> None:
    log: list[str] = []
    with pytest.raises(BaseException) as raised:
        async with backend.transaction() as tx:
            await backend.write(tx, 1)
            expected = await backend.refuse_commit(tx)
            tx.add(Recorded(log, "a"))
    assert isinstance(raised.value, expected)
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]
    assert tx.state is TransactionState.ROLLED_BACK
    assert await backend.rows() == []


async def test_a_swallowed_error_is_seen_at_commit_and_aborts(backend: Harness) -> None:
    log: list[str] = []
    with pytest.raises(TransactionAbortedError, match="answered COMMIT with ROLLBACK"):
        async with backend.transaction() as tx:
            await backend.write(tx, 1)
            tx.add(Recorded(log, "a"))
            await backend.swallow_an_error(tx)
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]
    assert await backend.rows() == []


async def test_postcommit_errors_are_logged_and_counted_not_raised(
    backend: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    with caplog.at_level(logging.ERROR, logger="hookbus"):
        async with backend.transaction() as tx:
            await backend.write(tx, 1)
            tx.add(Recorded(log, "a", fail="postcommit"))
            tx.add(Recorded(log, "b"))
    assert log == ["a.precommit", "b.precommit", "a.postcommit", "b.postcommit"]
    assert tx.postcommit_errors == 1
    assert tx.state is TransactionState.COMMITTED
    assert "postcommit of" in caplog.text and "a failed in postcommit" in caplog.text
    assert await backend.rows() == [1]


async def test_body_exception_rolls_back_and_propagates(backend: Harness) -> None:
    log: list[str] = []
    with pytest.raises(KeyError):
        async with backend.transaction() as tx:
            await backend.write(tx, 1)
            tx.add(Recorded(log, "a"))
            raise KeyError("body")
    assert log == ["a.rollback"]
    assert await backend.rows() == []


async def test_explicit_rollback_finishes_the_scope(backend: Harness) -> None:
    log: list[str] = []
    async with backend.transaction() as tx:
        await backend.write(tx, 1)
        tx.add(Recorded(log, "a"))
        await tx.rollback()
        with pytest.raises(TransactionStateError, match="rolled back"):
            tx.add(Recorded(log, "late"))
        with pytest.raises(TransactionStateError):
            await tx.rollback()
    assert log == ["a.rollback"]
    assert await backend.rows() == []


async def test_errors_in_revertprecommit_and_rollback_never_mask_the_original(
    backend: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    original = ValidationError(7, {None: "refused"})
    with pytest.raises(ValidationError) as raised:
        async with backend.transaction() as tx:
            tx.add(Recorded(log, "a", fail="revertprecommit"))
            tx.add(Recorded(log, "b", fail="rollback"))
            tx.add(Recorded(log, "c", fail="precommit", exc=original))
    assert raised.value is original
    assert log[-3:] == ["a.rollback", "b.rollback", "c.rollback"]
    assert "revertprecommit of" in caplog.text and "rollback of" in caplog.text


# -- what an operation raises, phase by phase -----------------------------------------------

RAISED = {
    "Exception": lambda: RuntimeError("op failed"),
    "CancelledError": asyncio.CancelledError,
    "KeyboardInterrupt": KeyboardInterrupt,
}


def caller_not_cancelled() -> bool:
    task = asyncio.current_task()
    assert task is not None
    return task.cancelling() == 0


@pytest.mark.parametrize("raised", list(RAISED))
async def test_an_operation_raising_in_precommit_fails_the_commit(
    backend: Harness, raised: str
) -> None:
    log: list[str] = []
    exc = RAISED[raised]()
    expected: type[BaseException] = {
        "Exception": RuntimeError,
        "CancelledError": TransactionAbortedError,  # the op's own: not a cancellation
        "KeyboardInterrupt": KeyboardInterrupt,
    }[raised]
    with pytest.raises(expected) as caught:
        async with backend.transaction() as tx:
            await backend.write(tx, 1)
            tx.add(Recorded(log, "a", fail="precommit", exc=exc))
            tx.add(Recorded(log, "b"))
    if raised == "CancelledError":
        assert caught.value.__cause__ is exc
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback", "b.rollback"]
    assert tx.state is TransactionState.ROLLED_BACK
    assert caller_not_cancelled()
    assert await backend.rows() == []


@pytest.mark.parametrize("raised", list(RAISED))
async def test_an_operation_raising_in_revertprecommit_stops_nothing(
    backend: Harness, raised: str, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    trigger = ValueError("the precommit that fails")
    expected = KeyboardInterrupt if raised == "KeyboardInterrupt" else ValueError
    with pytest.raises(expected):
        async with backend.transaction() as tx:
            await backend.write(tx, 1)
            tx.add(Recorded(log, "a", fail="revertprecommit", exc=RAISED[raised]()))
            tx.add(Recorded(log, "b", fail="precommit", exc=trigger))
    assert log == [
        "a.precommit",
        "b.precommit",
        "b.revertprecommit",
        "a.revertprecommit",
        "a.rollback",
        "b.rollback",
    ]
    assert tx.state is TransactionState.ROLLED_BACK
    assert caller_not_cancelled()
    assert await backend.rows() == []
    if raised != "KeyboardInterrupt":
        assert "revertprecommit of" in caplog.text


@pytest.mark.parametrize("raised", list(RAISED))
async def test_an_operation_raising_in_rollback_never_replaces_the_error(
    backend: Harness, raised: str
) -> None:
    log: list[str] = []
    expected = KeyboardInterrupt if raised == "KeyboardInterrupt" else KeyError
    with pytest.raises(expected):
        async with backend.transaction() as tx:
            await backend.write(tx, 1)
            tx.add(Recorded(log, "a", fail="rollback", exc=RAISED[raised]()))
            tx.add(Recorded(log, "b"))
            raise KeyError("the body's error")
    assert log == ["a.rollback", "b.rollback"]
    assert caller_not_cancelled()
    assert await backend.rows() == []


class TimingOut(hookbus.Operation):
    """An operation whose ``phase`` waits 5 s, unless its own timeout (``how``) ends it."""

    def __init__(self, log: list[str], phase: str, how: str) -> None:
        super().__init__()
        self.log, self.phase, self.how = log, phase, how

    async def _wait(self, phase: str) -> None:
        if phase != self.phase:
            return
        try:
            if self.how == "asyncio.timeout":
                async with asyncio.timeout(0.05):
                    await asyncio.sleep(5)
            elif self.how == "asyncio.wait_for":
                await asyncio.wait_for(asyncio.sleep(5), 0.05)
            else:
                with anyio.fail_after(0.05):
                    await asyncio.sleep(5)
        except TimeoutError:
            self.log.append(f"{phase} timed out")
        else:
            self.log.append(f"{phase} waited its 5 s")

    async def revertprecommit(self) -> None:
        await self._wait("revertprecommit")

    async def rollback(self) -> None:
        await self._wait("rollback")


@pytest.mark.parametrize("how", ["asyncio.timeout", "asyncio.wait_for", "anyio.fail_after"])
@pytest.mark.parametrize("phase", ["revertprecommit", "rollback"])
async def test_a_timeout_inside_a_rollback_phase_fires_there_and_cancels_no_one(
    backend: Harness, phase: str, how: str
) -> None:
    # The phases run shielded from the caller's cancellation: the operation's own timeout
    # still fires, in the operation, and no cancellation reaches the scope's caller.
    log: list[str] = []
    with pytest.raises(KeyError):
        async with backend.transaction() as tx:
            await backend.write(tx, 1)
            tx.add(TimingOut(log, phase, how))
            if phase == "revertprecommit":
                tx.add(Recorded(log, "b", fail="precommit", exc=KeyError("b failed")))
            else:
                raise KeyError("the body's error")
    assert f"{phase} timed out" in log
    assert caller_not_cancelled()
    assert await backend.rows() == []


@pytest.mark.parametrize("how", ["asyncio.timeout", "anyio.fail_after"])
async def test_a_timeout_inside_a_savepoints_rollback_fires_there_and_the_scope_commits(
    backend: Harness, how: str
) -> None:
    log: list[str] = []
    async with backend.transaction() as tx:
        await backend.write(tx, 1)  # begun: the savepoint is set, and rolled back
        with contextlib.suppress(KeyError):
            async with tx.savepoint():
                tx.add(TimingOut(log, "rollback", how))
                raise KeyError("the savepoint's block fails")
    assert log == ["rollback timed out"]
    assert caller_not_cancelled()
    assert await backend.rows() == [1]


@pytest.mark.parametrize("raised", list(RAISED))
async def test_an_operation_raising_in_postcommit_fails_no_one(
    backend: Harness, raised: str
) -> None:
    log: list[str] = []
    with (
        pytest.raises(KeyboardInterrupt)
        if raised == "KeyboardInterrupt"
        else contextlib.nullcontext()
    ):
        async with backend.transaction() as tx:
            await backend.write(tx, 1)
            tx.add(Recorded(log, "a", fail="postcommit", exc=RAISED[raised]()))
            tx.add(Recorded(log, "b"))
    assert log == ["a.precommit", "b.precommit", "a.postcommit", "b.postcommit"]
    assert tx.state is TransactionState.COMMITTED
    assert tx.postcommit_errors == (0 if raised == "KeyboardInterrupt" else 1)
    assert caller_not_cancelled()
    assert await backend.rows() == [1]


async def test_a_cancelled_scope_is_cancelled_even_if_an_operation_catches_nothing(
    backend: Harness,
) -> None:
    log: list[str] = []
    started = asyncio.Event()

    class Blocking(Recorded):
        async def precommit(self) -> None:
            await super().precommit()
            started.set()
            await asyncio.Event().wait()

    async def scope() -> None:
        async with backend.transaction() as tx:
            await backend.write(tx, 1)
            tx.add(Blocking(log, "a"))

    task = asyncio.create_task(scope())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]
    assert await backend.rows() == []


async def test_cancelled_in_the_body_still_rolls_back(backend: Harness) -> None:
    log: list[str] = []
    entered = asyncio.Event()

    async def scope() -> None:
        async with backend.transaction() as tx:
            await backend.write(tx, 1)
            tx.add(Recorded(log, "a"))
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(scope())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["a.rollback"]
    assert await backend.rows() == []


# -- doom -----------------------------------------------------------------------------------


async def test_a_doomed_scope_rolls_back_and_raises_its_first_error(backend: Harness) -> None:
    log: list[str] = []
    first, second = RuntimeError("first"), RuntimeError("second")
    with pytest.raises(RuntimeError) as raised:
        async with backend.transaction() as tx:
            await backend.write(tx, 1)
            tx.add(Recorded(log, "a"))
            tx.doom(first)
            tx.doom(second)
            assert tx.doomed is first
    assert raised.value is first
    assert any("doomed" in note for note in first.__notes__)
    assert log == ["a.rollback"]  # no precommit, so no revertprecommit
    assert tx.state is TransactionState.ROLLED_BACK
    assert await backend.rows() == []
    with pytest.raises(TransactionStateError):
        tx.doom(second)
    with pytest.raises(TypeError, match="takes an exception"):
        hookbus.transaction().doom("error")  # type: ignore[arg-type]


async def test_a_doom_inside_a_rolled_back_savepoint_is_lifted(backend: Harness) -> None:
    log: list[str] = []
    async with backend.transaction() as tx:
        await backend.write(tx, 1)
        tx.add(Recorded(log, "a"))
        with pytest.raises(KeyError):
            async with tx.savepoint():
                tx.doom(KeyError("x"))
                raise KeyError("x")
        assert tx.doomed is None
        async with tx.savepoint():
            pass
    assert log == ["a.precommit", "a.postcommit"]
    assert await backend.rows() == [1]


async def test_a_doom_from_before_a_rolled_back_savepoint_stays(backend: Harness) -> None:
    error = ValueError("before")
    with pytest.raises(ValueError) as raised:
        async with backend.transaction() as tx:
            tx.doom(error)
            with pytest.raises(KeyError):
                async with tx.savepoint():
                    tx.doom(KeyError("inside"))  # the first error stays the scope's
                    raise KeyError("inside")
            assert tx.doomed is error
    assert raised.value is error


async def test_a_doom_inside_a_released_savepoint_stays(backend: Harness) -> None:
    error = ValueError("kept")
    with pytest.raises(ValueError):
        async with backend.transaction() as tx, tx.savepoint():
            await backend.write(tx, 1)
            tx.doom(error)
    assert tx.state is TransactionState.ROLLED_BACK
    assert await backend.rows() == []


async def test_a_precommit_that_dooms_the_scope_reverts_and_rolls_back(backend: Harness) -> None:
    log: list[str] = []
    error = RuntimeError("late failure")

    class Dooming(Recorded):
        async def precommit(self) -> None:
            await super().precommit()
            hookbus.current_transaction().doom(error)

    with pytest.raises(RuntimeError) as raised:
        async with backend.transaction() as tx:
            await backend.write(tx, 1)
            tx.add(Dooming(log, "d"))
            tx.add(Recorded(log, "b"))
    assert raised.value is error
    assert log == ["d.precommit", "d.revertprecommit", "d.rollback", "b.rollback"]
    assert await backend.rows() == []


async def test_a_precommit_that_lifts_its_own_doom_lets_the_others_run(backend: Harness) -> None:
    log: list[str] = []

    class Recovering(Recorded):
        async def precommit(self) -> None:
            await super().precommit()
            tx = hookbus.current_transaction()
            with contextlib.suppress(KeyError):
                async with tx.savepoint():
                    tx.doom(RuntimeError("recovered"))
                    raise KeyError("undo")  # rolls the savepoint back, and the doom with it

    async with backend.transaction() as tx:
        await backend.write(tx, 1)
        tx.add(Recovering(log, "r"))
        tx.add(Recorded(log, "b"))
    assert tx.doomed is None
    assert log == ["r.precommit", "b.precommit", "r.postcommit", "b.postcommit"]
    assert await backend.rows() == [1]


# -- savepoints -----------------------------------------------------------------------------


async def test_savepoint_rolled_back_drops_its_work_and_released_keeps_it(
    backend: Harness,
) -> None:
    log: list[str] = []
    seen: list[Any] = []
    collect = functools.partial(Collect, seen)
    async with backend.transaction() as tx:
        await backend.write(tx, 1)
        tx.add(Recorded(log, "outer"))
        tx.accumulate("k", 1, collect)
        tx.accumulate("list", "a", collect, container=list)
        tx.mark_added(1)
        with pytest.raises(ValueError):
            async with tx.savepoint():
                await backend.write(tx, 2)
                tx.add(Recorded(log, "dropped"))
                tx.accumulate("k", 1, collect)  # already there: stays after the rollback
                tx.accumulate("k", 2, collect)
                tx.accumulate("list", "b", collect, container=list)
                tx.accumulate("list", "a", collect, container=list)
                tx.accumulate("new", 9, collect)
                tx.mark_added(2)
                tx.mark_deleted(1)
                async with tx.savepoint():  # released into the outer savepoint, then undone
                    await backend.write(tx, 3)
                    tx.add(Recorded(log, "inner"))
                raise ValueError("undo")
        assert log == ["dropped.rollback", "inner.rollback"]  # in scheduling order
        assert tx.added(1) and not tx.added(2) and not tx.deleted(1)
        async with tx.savepoint():
            await backend.write(tx, 4)
            tx.add(Recorded(log, "kept"))
            tx.accumulate("k", 3, collect)
            async with tx.savepoint():
                await backend.write(tx, 5)
    assert seen == [{1, 3}, ["a"]]
    assert [e for e in log if e.endswith("postcommit")] == ["outer.postcommit", "kept.postcommit"]
    assert await backend.rows() == [1, 4, 5]


async def test_a_savepoint_refuses_to_be_entered_twice_or_after_the_scope(
    backend: Harness,
) -> None:
    async with backend.transaction() as tx:
        savepoint = tx.savepoint()
        async with savepoint:
            pass
        with pytest.raises(TransactionStateError, match="entered once"):
            async with savepoint:
                pass
    with pytest.raises(TransactionStateError, match="committed"):
        async with tx.savepoint():
            pass


async def test_a_rollback_inside_a_savepoint_ends_the_scope(backend: Harness) -> None:
    log: list[str] = []
    async with backend.transaction() as tx, tx.savepoint():
        await backend.write(tx, 1)
        tx.add(Recorded(log, "a"))
        await tx.rollback()
    assert log == ["a.rollback"]
    assert tx.state is TransactionState.ROLLED_BACK
    assert await backend.rows() == []


async def test_a_precommit_may_use_savepoints(backend: Harness) -> None:
    log: list[str] = []

    class Tries(Recorded):
        async def precommit(self) -> None:
            await super().precommit()
            tx = hookbus.current_transaction()
            with pytest.raises(KeyError):
                async with tx.savepoint():
                    await backend.write(tx, 2)
                    tx.add(Recorded(log, "dropped"))
                    raise KeyError("undo")
            async with tx.savepoint():
                await backend.write(tx, 3)
                tx.add(LateRecorded(log, "kept"))

    async with backend.transaction() as tx:
        await backend.write(tx, 1)
        tx.add(Tries(log, "tries"))
    assert log == [
        "tries.precommit",
        "dropped.rollback",
        "kept.precommit",
        "tries.postcommit",
        "kept.postcommit",
    ]
    assert await backend.rows() == [1, 3]


async def test_savepoints_end_in_the_reverse_order_they_began(backend: Harness) -> None:
    async with backend.transaction() as tx:
        outer, inner = tx.savepoint(), tx.savepoint()
        await outer.__aenter__()
        await inner.__aenter__()
        with pytest.raises(TransactionStateError, match="reverse order"):
            await outer.__aexit__(None, None, None)
        await inner.__aexit__(None, None, None)
        await outer.__aexit__(None, None, None)


# -- the states -----------------------------------------------------------------------------


async def test_each_phase_runs_in_its_state(backend: Harness) -> None:
    seen: list[tuple[str, TransactionState]] = []

    class Watch(hookbus.Operation):
        def __init__(self, fail: bool = False) -> None:
            super().__init__()
            self.fail = fail

        def _see(self, phase: str) -> None:
            seen.append((phase, hookbus.current_transaction().state))

        async def precommit(self) -> None:
            self._see("precommit")
            if self.fail:
                raise RuntimeError("fail")

        async def revertprecommit(self) -> None:
            self._see("revertprecommit")

        async def rollback(self) -> None:
            self._see("rollback")

        async def postcommit(self) -> None:
            self._see("postcommit")

    async with backend.transaction() as tx:
        tx.add(Watch())
    with pytest.raises(RuntimeError):
        async with backend.transaction() as tx:
            tx.add(Watch(fail=True))
    S = TransactionState
    assert seen == [
        ("precommit", S.PRECOMMITTING),
        ("postcommit", S.COMMITTED),
        ("precommit", S.PRECOMMITTING),
        ("revertprecommit", S.ROLLING_BACK),
        ("rollback", S.ROLLED_BACK),
    ]


# -- the scope in its context ---------------------------------------------------------------


async def test_current_transaction_is_found_below_and_refused_outside(backend: Harness) -> None:
    with pytest.raises(TransactionStateError, match="no transaction scope"):
        hookbus.current_transaction()
    async with backend.transaction() as tx:
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


async def test_a_cancelled_delete_unmarks_its_entity(backend: Harness) -> None:
    async with backend.transaction() as tx:
        tx.mark_deleted(1)
        tx.unmark_deleted(1)
        tx.unmark_deleted(2)  # never marked: nothing to do
        assert not hookbus.deleted_in_transaction(1)
        tx.mark_deleted(3)
        with pytest.raises(KeyError):
            async with tx.savepoint():
                tx.unmark_deleted(3)
                assert not tx.deleted(3)
                raise KeyError("undo")
        assert tx.deleted(3)  # the savepoint's unmark was undone
    with pytest.raises(TransactionStateError, match="committed"):
        tx.unmark_deleted(3)


async def test_a_task_that_outlives_its_scope_cannot_schedule_into_it(backend: Harness) -> None:
    go_on = asyncio.Event()

    async def straggler() -> None:
        await go_on.wait()
        hookbus.current_transaction().add(hookbus.Operation())

    async with backend.transaction() as tx:
        task = asyncio.create_task(straggler())
    assert tx.state is TransactionState.COMMITTED
    go_on.set()
    with pytest.raises(TransactionStateError, match="the transaction scope is committed"):
        await task
    assert tx.operations == ()


async def test_scheduling_refuses_what_is_not_an_operation(backend: Harness) -> None:
    async with backend.transaction() as tx:
        with pytest.raises(TypeError, match="Operation instance"):
            tx.add(hookbus.Operation)  # type: ignore[arg-type]
        assert tx.operations == ()


# -- operations, as declared ----------------------------------------------------------------


def test_a_scope_subclass_cannot_override_the_scheduling_calls() -> None:
    with pytest.raises(TypeError, match="cannot override add"):

        class Custom(hookbus.Transaction):
            def add(self, op: hookbus.Operation) -> None:
                pass


def test_an_operation_phase_must_be_async() -> None:
    with pytest.raises(TypeError, match=r"Notify.postcommit must be an async def"):

        class Notify(hookbus.Operation):
            def postcommit(self) -> None:  # type: ignore[override]
                pass


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("post_commit", "postcommit"),
        ("preCommit", "precommit"),
        ("on_commit", "postcommit"),
        ("after_commit", "postcommit"),
        ("rollback_", "rollback"),
        ("postcommmit", "postcommit"),
        ("rolback", "rollback"),
        ("revert_pre_commit", "revertprecommit"),
    ],
)
def test_a_misspelled_phase_is_refused_at_class_definition(name: str, meant: str) -> None:
    async def method(self: hookbus.Operation) -> None:
        pass

    with pytest.raises(TypeError, match=f"did you mean '{meant}'"):
        type("Misspelled", (hookbus.Operation,), {name: method})


@pytest.mark.parametrize(
    "name", ["commit", "rollback_all", "send", "prepare", "post", "_precommit"]
)
def test_ordinary_method_names_are_not_taken_for_phases(name: str) -> None:
    async def method(self: hookbus.Operation) -> None:
        pass

    type("Fine", (hookbus.Operation,), {name: method})


# -- what only PostgreSQL can show ----------------------------------------------------------


async def test_a_caught_timeout_around_a_savepoint_never_dooms_the_scope(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute(SCHEMA)
    rng = random.Random(7)
    precommitted: list[int] = []
    rolled_back: list[int] = []

    class Row(hookbus.Operation):
        def __init__(self, row: int) -> None:
            super().__init__()
            self.row = row

        async def precommit(self) -> None:
            precommitted.append(self.row)

        async def rollback(self) -> None:
            rolled_back.append(self.row)

    timeouts = 0
    entered: list[int] = []  # the savepoints whose block ran (a timeout may hit SAVEPOINT)
    async with hookbus_asyncpg.transaction(pool) as tx:
        for row in range(200):
            try:
                async with asyncio.timeout(rng.uniform(0, 0.003)), tx.savepoint():
                    entered.append(row)
                    tx.add(Row(row))
                    await tx.connection.execute("INSERT INTO items VALUES ($1)", row)
            except TimeoutError:
                timeouts += 1
    assert tx.state is TransactionState.COMMITTED
    assert 0 < timeouts < 200, "the timeouts must hit some savepoints and spare others"
    rows = [r[0] for r in await pool.fetch("SELECT id FROM items ORDER BY id")]
    assert rows == sorted(precommitted)  # what the released savepoints wrote, and only that
    assert sorted(precommitted + rolled_back) == entered  # each one either way, once
    await assert_pool_hands_out_everything(pool)


async def test_serialization_failure_at_commit(items: asyncpg.Pool) -> None:
    logs: dict[str, list[str]] = {"first": [], "second": []}
    first_wrote, second_read, second_wrote = asyncio.Event(), asyncio.Event(), asyncio.Event()
    first_done = asyncio.Event()

    async def first() -> None:
        async with hookbus_asyncpg.transaction(items, isolation="serializable") as tx:
            await tx.connection.fetchval("SELECT count(*) FROM items WHERE id < 100")
            await second_read.wait()
            await tx.connection.execute("INSERT INTO items VALUES (100)")
            tx.add(Recorded(logs["first"], "op"))
            first_wrote.set()
            await second_wrote.wait()  # both wrote before either commits: COMMIT decides
        first_done.set()

    async def second() -> None:
        async with hookbus_asyncpg.transaction(items, isolation="serializable") as tx:
            await tx.connection.fetchval("SELECT count(*) FROM items WHERE id >= 100")
            second_read.set()
            await first_wrote.wait()
            await tx.connection.execute("INSERT INTO items VALUES (1)")
            tx.add(Recorded(logs["second"], "op"))
            second_wrote.set()
            await first_done.wait()

    results = await asyncio.gather(first(), second(), return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], asyncpg.SerializationError)
    assert logs["first"] == ["op.precommit", "op.postcommit"]
    assert logs["second"] == ["op.precommit", "op.revertprecommit", "op.rollback"]
    assert [r[0] for r in await items.fetch("SELECT id FROM items")] == [100]


def test_the_first_snippet_of_the_lifecycle_page_runs(capsys: pytest.CaptureFixture[str]) -> None:
    page = (Path(__file__).parent.parent / "docs" / "lifecycle.md").read_text()
    snippet = page.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(snippet, "docs/lifecycle.md", "exec"), {"__name__": "lifecycle_page"})
    out = capsys.readouterr().out
    assert "checking the quota of [1, 2]" in out
    assert out.index("quota") < out.index("welcome mail to ada")  # precommit, then postcommit
    assert "TransactionState.COMMITTED" in out
