"""The states of a scope as its user sees them: what a finished scope refuses, and that a scope
which rolls back really ends its transaction on the server.

Run on both backends where it applies (``_scopes``). Issue 14's guards: a rollback that sends
no ROLLBACK, a finished scope that still takes marks, a scope left re-enterable after a
failed BEGIN or an unknown COMMIT outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import hookbus_asyncpg
import pytest
import pytest_asyncio
from _postgres import assert_pool_hands_out_everything, gate_at_commit, wait_until_blocked_on_lock
from _recording import Recorded
from _scopes import SCHEMA, Scopes, connection, open_scopes, statements

import hookbus
from hookbus import (
    CommitOutcome,
    CommitOutcomeUnknownError,
    MemoryBackend,
    TransactionState,
    TransactionStateError,
)

LOCK = 1414  # the advisory lock the table `gated` takes at COMMIT (a deferred trigger)


@pytest_asyncio.fixture
async def items(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    await pool.execute(SCHEMA)
    yield pool
    await assert_pool_hands_out_everything(pool)


@pytest.fixture(params=["memory", "asyncpg"])
def scopes(request: pytest.FixtureRequest) -> Scopes:
    return open_scopes(request)


class Boom(Exception):
    """What the tests raise to roll a scope back."""


# -- a scope that rolls back ends its transaction -------------------------------------------

# The ways a scope rolls back; each leaves the scope through the rollback path.
ENDINGS = ["tx.rollback()", "the body raises", "a precommit raises", "tx.doom()"]


async def _roll_back(tx: hookbus.Transaction, log: list[str], ending: str) -> None:
    """Schedule an operation in ``tx``, then roll it back the way ``ending`` says."""
    fail = "precommit" if ending == "a precommit raises" else None
    tx.add(Recorded(log, "a", fail=fail, exc=Boom("precommit")))
    if ending == "tx.rollback()":
        await tx.rollback()
    elif ending == "the body raises":
        raise Boom("body")
    elif ending == "tx.doom()":
        tx.doom(Boom("doomed"))


@pytest.mark.parametrize("ending", ENDINGS)
async def test_a_scope_rolled_back_sends_rollback_memory(ending: str) -> None:
    log: list[str] = []
    tx = hookbus.transaction()
    with contextlib.suppress(Boom):
        async with tx:
            await tx.begin()  # what a first statement does: the transaction has begun
            await _roll_back(tx, log, ending)
    sent = statements(tx)
    assert sent[0] == "BEGIN"
    assert sent[-1] == "ROLLBACK" and "COMMIT" not in sent
    assert tx.state is TransactionState.ROLLED_BACK
    assert log[-1] == "a.rollback"


@pytest.mark.parametrize("ending", ENDINGS)
async def test_a_scope_rolled_back_ends_the_transaction_on_its_connection(
    items: asyncpg.Pool, conn: asyncpg.Connection, ending: str
) -> None:
    # On a connection of the caller's: no pool's reset can hide a missing ROLLBACK.
    log: list[str] = []
    with contextlib.suppress(Boom):
        async with hookbus_asyncpg.transaction(conn) as tx:
            await conn.execute("INSERT INTO items VALUES (1)")
            await _roll_back(tx, log, ending)
            if ending == "tx.rollback()":  # ended there and then, not at the block's end
                assert not conn.is_in_transaction()
                assert await conn.fetchval("SELECT count(*) FROM items") == 0
    assert tx.state is TransactionState.ROLLED_BACK
    assert log[-1] == "a.rollback"
    assert not conn.is_in_transaction()
    # What the server says of that session: no transaction open, the row gone.
    activity = await items.fetchrow(
        "SELECT state, xact_start FROM pg_stat_activity WHERE pid = $1", conn.get_server_pid()
    )
    assert activity is not None
    assert (activity["state"], activity["xact_start"]) == ("idle", None)
    assert await conn.fetchval("SELECT count(*) FROM items") == 0
    # The connection takes a scope of its own again.
    async with hookbus_asyncpg.transaction(conn):
        await conn.execute("INSERT INTO items VALUES (2)")
    assert await items.fetchval("SELECT count(*) FROM items") == 1


async def test_tx_rollback_ends_the_server_transaction_before_the_block_ends(
    items: asyncpg.Pool, dsn: str
) -> None:
    # The scope gives its connection back to the pool as soon as ROLLBACK is answered; the
    # pool's reset would roll back a transaction left open and hide a missing ROLLBACK, so
    # the connection says whether it was still in a transaction when it came back.
    returned: list[bool] = []

    class Watched(asyncpg.Connection):
        async def reset(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109 (asyncpg's signature)
            returned.append(self.is_in_transaction())
            await super().reset(timeout=timeout)

    async with asyncpg.create_pool(dsn, min_size=1, max_size=1, connection_class=Watched) as pool:
        async with hookbus_asyncpg.transaction(pool) as tx:
            await tx.connection.execute("INSERT INTO items VALUES (1)")
            await tx.rollback()
            assert returned == [False]  # back in the pool, with no transaction open
        assert await pool.fetchval("SELECT count(*) FROM items") == 0


# -- a finished scope refuses work ------------------------------------------------------------


async def _assert_refuses_work(tx: hookbus.Transaction) -> None:
    """Every scheduling call and a savepoint are refused, and record nothing."""
    log: list[str] = []
    doomed = tx.doomed
    # Each refusal names what was refused.
    with pytest.raises(TransactionStateError, match="Recorded"):
        tx.add(Recorded(log, "late"))
    with pytest.raises(TransactionStateError, match="'k'"):
        tx.accumulate("k", 1, hookbus.Operation)
    with pytest.raises(TransactionStateError, match=r"\b10 added"):
        tx.mark_added(10)
    with pytest.raises(TransactionStateError, match=r"\b11 deleted"):
        tx.mark_deleted(11)
    with pytest.raises(TransactionStateError, match=r"\b12 deleted"):
        tx.unmark_deleted(12)
    with pytest.raises(TransactionStateError, match="late"):
        tx.doom(Boom("late"))
    with pytest.raises(TransactionStateError, match="roll back"):
        await tx.rollback()
    with pytest.raises(TransactionStateError):
        async with tx.savepoint():
            pass
    assert not tx.added(10) and not tx.deleted(11)
    assert tx.doomed is doomed
    assert log == []


@pytest.mark.parametrize("ending", ["committed", *ENDINGS])
async def test_a_finished_scope_refuses_work_and_marks(scopes: Scopes, ending: str) -> None:
    log: list[str] = []
    with contextlib.suppress(Boom):
        async with scopes.transaction() as tx:
            await scopes.write(tx, 1)
            tx.mark_deleted(12)
            if ending != "committed":
                await _roll_back(tx, log, ending)
    expected = TransactionState.COMMITTED if ending == "committed" else TransactionState.ROLLED_BACK
    assert tx.state is expected
    await _assert_refuses_work(tx)
    assert tx.deleted(12)  # what it recorded while open stays readable
    with pytest.raises(TransactionStateError):
        async with tx:  # a scope is entered once
            pass
    assert tx.state is expected


async def test_a_scope_not_yet_entered_refuses_work() -> None:
    tx = hookbus.transaction()
    assert tx.state is TransactionState.NEW
    await _assert_refuses_work(tx)
    async with tx:  # refusing left it usable
        tx.mark_added(1)
        assert hookbus.added_in_transaction(1)
    assert tx.state is TransactionState.COMMITTED


async def test_each_postcommit_error_is_counted(scopes: Scopes) -> None:
    log: list[str] = []
    async with scopes.transaction() as tx:
        await scopes.write(tx, 1)
        tx.add(Recorded(log, "a", fail="postcommit"))
        tx.add(Recorded(log, "b"))
        tx.add(Recorded(log, "c", fail="postcommit"))
    assert tx.state is TransactionState.COMMITTED
    assert tx.postcommit_errors == 2
    assert log[-3:] == ["a.postcommit", "b.postcommit", "c.postcommit"]


class Stalls(Recorded):
    """A recording operation whose postcommit waits until its task is cancelled."""

    def __init__(self, log: list[str], name: str, started: asyncio.Event) -> None:
        super().__init__(log, name)
        self.started = started

    async def postcommit(self) -> None:
        await super().postcommit()
        self.started.set()
        await asyncio.Event().wait()


async def test_a_cancelled_postcommit_counts_itself_and_the_ones_after_it_as_not_run(
    scopes: Scopes,
) -> None:
    log: list[str] = []
    started = asyncio.Event()

    async def commit() -> hookbus.Transaction:
        async with scopes.transaction() as tx:
            await scopes.write(tx, 1)
            tx.add(Recorded(log, "a"))
            tx.add(Stalls(log, "b", started))
            tx.add(Recorded(log, "c"))
            tx.add(Recorded(log, "d"))
            scope.append(tx)
        return tx

    scope: list[hookbus.Transaction] = []
    task = asyncio.create_task(commit())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (tx,) = scope
    assert tx.state is TransactionState.COMMITTED  # the data stays committed
    assert tx.postcommit_not_run == 3  # b (cancelled), c and d
    assert log[-2:] == ["a.postcommit", "b.postcommit"]


async def test_a_scope_that_committed_every_postcommit_has_none_not_run(scopes: Scopes) -> None:
    log: list[str] = []
    async with scopes.transaction() as tx:
        await scopes.write(tx, 1)
        tx.add(Recorded(log, "a"))
    assert (tx.postcommit_not_run, tx.postcommit_errors) == (0, 0)


# -- a scope that failed stays failed ---------------------------------------------------------


class RefusedBegin:
    """A memory backend whose BEGIN fails (the connection was lost before it)."""

    def __init__(self) -> None:
        self.memory = MemoryBackend()

    async def begin(self) -> None:
        raise ConnectionResetError("BEGIN could not be sent")

    async def commit(self) -> CommitOutcome:
        return await self.memory.commit()

    async def rollback(self) -> None:
        await self.memory.rollback()

    async def savepoint(self, name: str) -> None:
        await self.memory.savepoint(name)

    async def release(self, name: str) -> None:
        await self.memory.release(name)

    async def rollback_to(self, name: str) -> None:
        await self.memory.rollback_to(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.memory, name)  # what a backend may be asked besides


async def test_a_scope_whose_begin_failed_is_finished() -> None:
    log: list[str] = []
    tx = hookbus.transaction(RefusedBegin())
    with pytest.raises(ConnectionResetError, match="BEGIN"):
        # What a first statement does: a scope that begins lazily begins there.
        async with tx:
            tx.add(Recorded(log, "a"))
            await tx.begin()
    assert tx.state in (TransactionState.FAILED, TransactionState.ROLLED_BACK)
    assert "a.precommit" not in log and "a.postcommit" not in log
    await _assert_refuses_work(tx)
    with pytest.raises(TransactionStateError):
        async with tx:  # never entered again
            pass


async def test_a_finished_scope_names_what_it_refuses_and_its_state() -> None:
    async with hookbus.transaction() as tx:
        pass
    state = "the transaction scope is committed$"
    with pytest.raises(TransactionStateError, match=f"^cannot begin the transaction: {state}"):
        await tx.begin()
    with pytest.raises(TransactionStateError, match=f"^cannot enter the scope again: {state}"):
        async with tx:
            pass
    with pytest.raises(TransactionStateError, match=f"^cannot roll back: {state}"):
        await tx.rollback()
    with pytest.raises(TypeError, match=r"^tx\.add\(\) takes an Operation instance, not 'op'$"):
        tx.add("op")  # type: ignore[arg-type]
    no_scope = (
        r"^no transaction scope is open here: open one with "
        r"`async with hookbus\.transaction\(\):` \(or an adapter's `transaction\(\)`\)$"
    )
    with pytest.raises(TransactionStateError, match=no_scope):
        hookbus.current_transaction()


class RefusedEagerBegin(RefusedBegin):
    """A backend that begins when the scope is entered, whose BEGIN fails there."""

    lazy = False

    def __init__(self) -> None:
        super().__init__()
        self.closed = 0

    async def close(self) -> None:
        self.closed += 1


async def test_a_scope_whose_begin_failed_on_entering_is_failed_and_gave_its_session_back() -> None:
    backend = RefusedEagerBegin()
    tx = hookbus.transaction(backend)
    with pytest.raises(ConnectionResetError, match="BEGIN"):
        async with tx:
            pytest.fail("the body runs only once the scope began")
    assert tx.state is TransactionState.FAILED
    assert backend.closed == 1
    await _assert_refuses_work(tx)
    with pytest.raises(TransactionStateError):
        async with tx:
            pass


async def test_an_unknown_commit_outcome_leaves_the_scope_failed_memory() -> None:
    log: list[str] = []
    lost = CommitOutcomeUnknownError("the connection was lost during COMMIT")
    tx = hookbus.transaction(MemoryBackend(commit_error=lost))
    with pytest.raises(CommitOutcomeUnknownError):
        async with tx:
            await tx.begin()  # what a first statement does
            tx.add(Recorded(log, "a"))
    assert tx.state is TransactionState.FAILED
    assert log == ["a.precommit"]  # neither postcommit nor rollback: the outcome is unknown
    await _assert_refuses_work(tx)
    with pytest.raises(TransactionStateError):
        async with tx:
            pass


async def test_an_unknown_commit_outcome_leaves_the_scope_failed_asyncpg(
    items: asyncpg.Pool,
) -> None:
    log: list[str] = []
    await items.execute("CREATE TABLE IF NOT EXISTS gated (id int)")
    await items.execute(gate_at_commit("gated", LOCK))
    started: asyncio.Queue[hookbus_asyncpg.AsyncpgTransaction] = asyncio.Queue()

    async def scope() -> None:
        async with hookbus_asyncpg.transaction(items, find_outcome=False) as tx:
            await tx.connection.execute("INSERT INTO gated VALUES (1)")
            tx.add(Recorded(log, "a"))
            started.put_nowait(tx)

    async with items.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK)
        task = asyncio.create_task(scope())
        tx = await started.get()
        await wait_until_blocked_on_lock(holder, connection(tx).get_server_pid())
        connection(tx).terminate()  # COMMIT in flight, its answer lost
        with pytest.raises(
            CommitOutcomeUnknownError, match="opened with find_outcome=False"
        ) as raised:
            await task
        await holder.execute("SELECT pg_advisory_unlock($1)", LOCK)
    assert raised.value.__cause__ is not None  # the loss itself
    assert tx.state is TransactionState.FAILED
    assert log == ["a.precommit"]
    await _assert_refuses_work(tx)
    with pytest.raises(TransactionStateError):
        async with tx:
            pass
