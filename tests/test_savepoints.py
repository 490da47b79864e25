"""Savepoints nested in savepoints, through the public API, on both backends (``_scopes``).

Issue 14's guards: an outer savepoint that cannot end after an inner one rolled back; what
the inner one undid, undone a second time by the outer one (a list value popped twice, a
lifted doom lifted again); a failed or cancelled SAVEPOINT inside another leaving the nesting
wrong; ``async with tx.savepoint() as sp`` giving something else than the savepoint; another
task's work silently undone by a savepoint it did not enter (refused while one is open).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from _postgres import assert_pool_hands_out_everything
from _recording import Recorded
from _scopes import SCHEMA, Scopes, connection, open_scopes, statements

import hookbus
from hookbus import CommitOutcome, MemoryBackend, TransactionState


@pytest_asyncio.fixture
async def items(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    await pool.execute(SCHEMA)
    yield pool
    await assert_pool_hands_out_everything(pool)


@pytest.fixture(params=["memory", "asyncpg"])
def scopes(request: pytest.FixtureRequest) -> Scopes:
    return open_scopes(request)


class Boom(Exception):
    """What the tests raise to roll a savepoint back."""


class Collect(hookbus.Operation):
    """Records a copy of its values at precommit."""

    def __init__(self, seen: list[Any]) -> None:
        super().__init__()
        self.seen = seen

    async def precommit(self) -> None:
        self.seen.append(list(self.values))


def assert_well_nested(sent: list[str]) -> None:
    """Every SAVEPOINT the memory backend recorded ended (RELEASE or ROLLBACK TO), innermost
    first, before COMMIT or ROLLBACK."""
    open_names: list[str] = []
    for statement in sent:
        if statement.startswith("SAVEPOINT "):
            open_names.append(statement.removeprefix("SAVEPOINT "))
        elif statement.startswith(("RELEASE SAVEPOINT ", "ROLLBACK TO SAVEPOINT ")):
            assert open_names, f"{statement} ends no open savepoint: {sent}"
            assert statement.endswith(" " + open_names.pop()), f"out of order: {sent}"
        elif statement in ("COMMIT", "ROLLBACK"):
            assert open_names == [], f"{statement} with savepoints open: {sent}"


# -- an inner savepoint rolled back ----------------------------------------------------------


async def test_an_outer_savepoint_is_released_after_an_inner_one_rolled_back(
    scopes: Scopes,
) -> None:
    log: list[str] = []
    async with scopes.transaction() as tx:
        await scopes.write(tx, 1)
        async with tx.savepoint():
            await scopes.write(tx, 2)
            tx.add(Recorded(log, "outer"))
            with pytest.raises(Boom):
                async with tx.savepoint():
                    await scopes.write(tx, 3)
                    tx.add(Recorded(log, "inner"))
                    raise Boom
            await scopes.write(tx, 4)
            async with tx.savepoint():  # a third one at the same depth, released
                await scopes.write(tx, 5)
        await scopes.write(tx, 6)
    assert tx.state is TransactionState.COMMITTED
    assert log == ["inner.rollback", "outer.precommit", "outer.postcommit"]
    assert await scopes.rows() in (None, [1, 2, 4, 5, 6])
    if scopes.name == "memory":
        assert_well_nested(statements(tx))


async def test_an_outer_savepoint_rolled_back_undoes_each_thing_once(scopes: Scopes) -> None:
    log: list[str] = []
    seen: list[Any] = []
    collect = functools.partial(Collect, seen)
    async with scopes.transaction() as tx:
        await scopes.write(tx, 1)
        tx.accumulate("list", "x", collect, container=list)
        tx.mark_added(1)
        with pytest.raises(Boom, match="outer"):
            async with tx.savepoint():
                await scopes.write(tx, 2)
                tx.accumulate("list", "a", collect, container=list)
                tx.accumulate("list", "x", collect, container=list)
                tx.add(Recorded(log, "outer"))
                with pytest.raises(Boom, match="inner"):
                    async with tx.savepoint():
                        await scopes.write(tx, 3)
                        tx.accumulate("list", "b", collect, container=list)
                        tx.accumulate("list", "x", collect, container=list)
                        tx.add(Recorded(log, "inner"))
                        tx.mark_added(2)
                        tx.mark_deleted(1)
                        tx.doom(Boom("doomed inside"))
                        raise Boom("inner")
                assert tx.doomed is None  # the inner rollback lifted it
                assert log == ["inner.rollback"]
                # Work after the inner savepoint belongs to the outer one.
                tx.accumulate("list", "c", collect, container=list)
                tx.add(Recorded(log, "after"))
                tx.mark_added(3)
                raise Boom("outer")
        # The outer rollback undid its own work, and only that.
        assert log == ["inner.rollback", "outer.rollback", "after.rollback"]
        assert not tx.added(3)
        assert tx.doomed is None
        assert tx.added(1) and not tx.added(2) and not tx.deleted(1)
        await scopes.write(tx, 4)
    assert tx.state is TransactionState.COMMITTED
    assert seen == [["x"]]
    assert await scopes.rows() in (None, [1, 4])
    if scopes.name == "memory":
        assert_well_nested(statements(tx))


async def test_a_doom_set_in_an_outer_savepoint_survives_an_inner_rollback(
    scopes: Scopes,
) -> None:
    with pytest.raises(Boom, match="outer doom"):
        async with scopes.transaction() as tx:
            await scopes.write(tx, 1)
            async with tx.savepoint():
                tx.doom(Boom("outer doom"))
                with pytest.raises(KeyError):
                    async with tx.savepoint():
                        tx.doom(Boom("inner doom"))  # doomed already: the first error stays
                        raise KeyError("inner")
                assert isinstance(tx.doomed, Boom) and str(tx.doomed) == "outer doom"
    assert tx.state is TransactionState.ROLLED_BACK
    assert await scopes.rows() in (None, [])


# -- a savepoint that could not begin ---------------------------------------------------------


async def test_a_savepoint_cancelled_as_it_begins_leaves_the_outer_one_able_to_end(
    scopes: Scopes,
) -> None:
    log: list[str] = []
    async with scopes.transaction() as tx:
        await scopes.write(tx, 1)
        async with tx.savepoint():
            await scopes.write(tx, 2)
            tx.add(Recorded(log, "outer"))
            # Cancelled at its first await: during SAVEPOINT (or, at the latest, in the block).
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0), tx.savepoint():
                    tx.add(Recorded(log, "inner"))
                    await asyncio.sleep(0)
            await scopes.write(tx, 3)
            async with tx.savepoint():
                await scopes.write(tx, 4)
        await scopes.write(tx, 5)
    assert tx.state is TransactionState.COMMITTED
    assert "outer.postcommit" in log and "inner.postcommit" not in log
    assert await scopes.rows() in (None, [1, 2, 3, 4, 5])
    if scopes.name == "memory":
        assert_well_nested(statements(tx))


class RefusesSecondSavepoint:
    """A memory backend whose second SAVEPOINT fails (as on a lost connection)."""

    def __init__(self) -> None:
        self.memory = MemoryBackend()
        self.savepoints = 0

    async def begin(self) -> None:
        await self.memory.begin()

    async def commit(self) -> CommitOutcome:
        return await self.memory.commit()

    async def rollback(self) -> None:
        await self.memory.rollback()

    async def savepoint(self, name: str) -> None:
        self.savepoints += 1
        if self.savepoints == 2:
            raise ConnectionResetError("SAVEPOINT could not be sent")
        await self.memory.savepoint(name)

    async def release(self, name: str) -> None:
        await self.memory.release(name)

    async def rollback_to(self, name: str) -> None:
        await self.memory.rollback_to(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.memory, name)  # what a backend may be asked besides


async def test_a_savepoint_that_failed_to_begin_leaves_the_outer_one_able_to_end() -> None:
    log: list[str] = []
    backend = RefusesSecondSavepoint()
    async with hookbus.transaction(backend) as tx:
        await tx.begin()  # begun: each savepoint sends its SAVEPOINT as it is entered
        async with tx.savepoint():
            tx.add(Recorded(log, "outer"))
            with pytest.raises(ConnectionResetError):
                async with tx.savepoint():
                    tx.add(Recorded(log, "inner"))  # never runs: SAVEPOINT failed
            tx.mark_added(1)
            async with tx.savepoint():  # the third one
                tx.mark_added(2)
        assert tx.added(1) and tx.added(2)
    assert tx.state is TransactionState.COMMITTED
    assert log == ["outer.precommit", "outer.postcommit"]
    assert_well_nested(backend.memory.statements)


# -- what `async with` gives -------------------------------------------------------------------


async def test_entering_a_savepoint_gives_the_savepoint(scopes: Scopes) -> None:
    async with scopes.transaction() as tx:
        await scopes.write(tx, 1)
        savepoint = tx.savepoint()
        async with savepoint as entered:
            assert entered is savepoint
            assert isinstance(entered, hookbus.Savepoint)
            inner = tx.savepoint()
            async with inner as entered_inner:
                assert entered_inner is inner


# -- two tasks sharing one scope while a savepoint is open --------------------------------------

# What another task is refused while a savepoint is open: everything its rollback would undo.
ANOTHER_TASK = r"savepoint hookbus_sp_\d+ of this scope is open in another task \(task 'owner'\)"


def changes(tx: hookbus.Transaction, log: list[str], seen: list[Any]) -> dict[str, Any]:
    """Each way of changing a scope without a statement, as a call of no argument."""
    collect = functools.partial(Collect, seen)
    return {
        "add": lambda: tx.add(Recorded(log, "other")),
        "accumulate": lambda: tx.accumulate("key", "other", collect),
        "accumulate_many": lambda: tx.accumulate_many("key", ["other"], collect),
        "mark_added": lambda: tx.mark_added("other"),
        "mark_deleted": lambda: tx.mark_deleted("other"),
        "unmark_deleted": lambda: tx.unmark_deleted("other"),
        "doom": lambda: tx.doom(Boom("other")),
    }


async def first_statement(scopes: Scopes, tx: hookbus.Transaction) -> None:
    """The scope's first statement, which begins it (memory: ``tx.begin()``)."""
    if scopes.name == "memory":
        await tx.begin()
    else:
        await connection(tx).execute("INSERT INTO items VALUES (2)")


async def test_another_task_is_refused_what_an_open_savepoint_would_undo(
    scopes: Scopes,
) -> None:
    log: list[str] = []
    seen: list[Any] = []
    entered, refused = asyncio.Event(), asyncio.Event()

    async def other(tx: hookbus.Transaction) -> None:
        """A task started before the savepoint, sharing the scope."""
        await entered.wait()
        try:
            for name, change in changes(tx, log, seen).items():
                with pytest.raises(hookbus.TransactionStateError, match=ANOTHER_TASK) as refused_:
                    change()
                assert str(refused_.value).startswith("cannot "), name
                assert "rolling it back would undo this too" in str(refused_.value), name
            with pytest.raises(hookbus.TransactionStateError, match="cannot set a savepoint: "):
                async with tx.savepoint():
                    pass
            # The scope has not begun: the savepoint's SAVEPOINT waits for BEGIN, and this
            # statement, which would send both, would run inside it.
            with pytest.raises(hookbus.TransactionStateError, match="cannot begin the transa"):
                await first_statement(scopes, tx)
            assert not tx.begun
        finally:
            refused.set()  # the owner goes on whatever happened here

    async def owner(tx: hookbus.Transaction) -> None:
        with pytest.raises(Boom, match="mine"):
            async with tx.savepoint():
                tx.add(Recorded(log, "mine"))
                entered.set()
                await refused.wait()
                await scopes.write(tx, 1)
                raise Boom("mine")

    async def after(tx: hookbus.Transaction) -> None:
        tx.add(Recorded(log, "after"))
        tx.accumulate("key", "after", functools.partial(Collect, seen))
        tx.mark_added("after")
        await scopes.write(tx, 3)

    async with scopes.transaction() as tx:
        other_task = asyncio.create_task(other(tx), name="other")
        await asyncio.create_task(owner(tx), name="owner")
        await other_task
        assert log == ["mine.rollback"]  # the other task's work was refused, not undone
        assert tx.doomed is None and not tx.added("other") and not tx.deleted("other")
        # Once the savepoint has ended, the other task changes the scope again.
        await asyncio.create_task(after(tx), name="other")
        assert tx.added("after")
    assert tx.state is TransactionState.COMMITTED
    assert log == ["mine.rollback", "after.precommit", "after.postcommit"]
    assert seen == [["after"]]
    assert await scopes.rows() in (None, [3])


async def test_an_inner_savepoint_ending_leaves_the_outer_one_held(scopes: Scopes) -> None:
    # Inside the savepoints, the owner's accumulation keeps the container it asked for;
    # once the inner one has ended, the outer one still refuses another task.
    log: list[str] = []
    seen: list[Any] = []
    inner_ended, refused = asyncio.Event(), asyncio.Event()

    async def other(tx: hookbus.Transaction) -> None:
        await inner_ended.wait()
        try:
            with pytest.raises(hookbus.TransactionStateError, match=ANOTHER_TASK):
                tx.add(Recorded(log, "other"))
        finally:
            refused.set()

    async def owner(tx: hookbus.Transaction) -> None:
        async with tx.savepoint():
            async with tx.savepoint():
                collect = functools.partial(Collect, seen)
                tx.accumulate("key", "twice", collect, list)
                tx.accumulate("key", "twice", collect, list)
            inner_ended.set()
            await refused.wait()
            await scopes.write(tx, 1)

    async with scopes.transaction() as tx:
        other_task = asyncio.create_task(other(tx), name="other")
        await asyncio.create_task(owner(tx), name="owner")
        await other_task
    assert tx.state is TransactionState.COMMITTED
    assert log == []
    assert seen == [["twice", "twice"]]
    assert await scopes.rows() in (None, [1])


async def test_a_task_started_inside_a_savepoint_works_in_it(scopes: Scopes) -> None:
    log: list[str] = []
    inner_open, parent_refused = asyncio.Event(), asyncio.Event()

    async def child(tx: hookbus.Transaction) -> None:
        """Started inside the savepoint: its work is the savepoint's, undone with it."""
        try:
            tx.add(Recorded(log, "child"))
            tx.mark_added("child")
            await scopes.write(tx, 2)
            async with tx.savepoint():  # the child's own savepoint, inside the parent's
                tx.add(Recorded(log, "child-inner"))
                inner_open.set()
                await parent_refused.wait()
        finally:
            inner_open.set()  # the parent goes on whatever happened here

    async def owner(tx: hookbus.Transaction) -> None:
        with pytest.raises(Boom):
            async with tx.savepoint():
                await scopes.write(tx, 1)
                task = asyncio.create_task(child(tx), name="child")
                await inner_open.wait()
                try:
                    # The child's savepoint is innermost now: its rollback would undo this.
                    with pytest.raises(hookbus.TransactionStateError, match=r"\(task 'chi"):
                        tx.add(Recorded(log, "owner-while-child-inner"))
                finally:
                    parent_refused.set()
                    await task
                tx.add(Recorded(log, "owner"))  # the child's savepoint ended
                raise Boom

    async with scopes.transaction() as tx:
        await scopes.write(tx, 0)
        await asyncio.create_task(owner(tx), name="owner")
        assert not tx.added("child")
    assert tx.state is TransactionState.COMMITTED
    assert log == ["child.rollback", "child-inner.rollback", "owner.rollback"]
    assert await scopes.rows() in (None, [0])
    if scopes.name == "memory":
        assert_well_nested(statements(tx))
