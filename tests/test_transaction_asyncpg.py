"""The asyncpg scope against a real PostgreSQL: what only this backend can show.

Connection losses and cancellations in flight, options, SQL errors inside savepoints, scale.
The lifecycle common to every backend is in ``test_lifecycle.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
import asyncpg
import hookbus_asyncpg
import pytest
import pytest_asyncio
from _postgres import (
    assert_pool_hands_out_everything,
    backend_pid,
    gate_at_commit,
    holding_lock,
    ids,
    start_gated_commit,
    wait_until_blocked_on_lock,
)
from _recording import Recorded

import hookbus
from hookbus import TransactionAbortedError, TransactionState

LOCK = 4242  # the advisory lock the gated table's deferred trigger waits for at COMMIT

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, note text);
CREATE TABLE IF NOT EXISTS parent (id int PRIMARY KEY);
CREATE TABLE IF NOT EXISTS child (
    id int PRIMARY KEY,
    parent_id int REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED
);
CREATE TABLE IF NOT EXISTS gated (id int PRIMARY KEY);
{gate_at_commit("gated", LOCK)}
TRUNCATE items, child, parent, gated;
"""


@pytest_asyncio.fixture
async def db(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """The pool, on empty tables."""
    await pool.execute(SCHEMA)
    yield pool
    await assert_pool_hands_out_everything(pool)


# -- commit ---------------------------------------------------------------------------------


async def test_options_reach_begin(db: asyncpg.Pool) -> None:
    async with hookbus_asyncpg.transaction(db, isolation="serializable", readonly=True) as tx:
        assert await tx.connection.fetchval("SHOW transaction_isolation") == "serializable"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await tx.connection.execute("INSERT INTO items VALUES (1)")
        await tx.rollback()
    with pytest.raises(ValueError, match="isolation must be one of"):
        hookbus_asyncpg.transaction(db, isolation="chaos")  # type: ignore[arg-type]


async def test_a_backend_is_refused_what_it_cannot_run_on(db: asyncpg.Pool) -> None:
    with pytest.raises(TypeError, match="needs a connection or a pool to take one from"):
        hookbus_asyncpg.AsyncpgBackend(None)
    async with db.acquire() as conn:
        with pytest.raises(TypeError, match="options must be a TransactionOptions, not 'x'"):
            hookbus_asyncpg.AsyncpgBackend(conn, "x")  # type: ignore[arg-type]


async def test_a_backend_on_a_connection_given_with_its_pool_leaves_the_connection_to_its_owner(
    db: asyncpg.Pool,
) -> None:
    # The pool is where a lost COMMIT's outcome is asked; the connection stays the caller's:
    # the scope never gives it back to the pool (the caller's own release does).
    async with db.acquire() as conn:
        async with hookbus.transaction(hookbus_asyncpg.AsyncpgBackend(conn, pool=db)):
            await conn.execute("INSERT INTO items VALUES (1)")
        assert await conn.fetchval("SELECT count(*) FROM items") == 1
    assert await ids(db) == [1]


async def test_a_given_connection_is_used_and_kept(
    conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await conn.execute(SCHEMA)
    with caplog.at_level(logging.WARNING, logger="hookbus"):
        async with hookbus_asyncpg.transaction(conn) as tx:
            assert tx.connection is conn
            await conn.execute("INSERT INTO items VALUES (5)")
    assert await conn.fetchval("SELECT count(*) FROM items WHERE id = 5") == 1
    assert not conn.is_closed()
    assert caplog.records == []  # nothing to give back, and nothing tried


# -- body -----------------------------------------------------------------------------------


async def test_backend_terminated_in_the_body_runs_the_rollback_path(
    db: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    # asyncpg reports the loss as the server's FATAL, a closed connection, a released proxy
    # (the pool took the dead connection back) or, when the FATAL lands while the next
    # statement is being sent, its InternalClientError: any of them ends the body.
    lost = (
        asyncpg.AdminShutdownError,
        asyncpg.ConnectionDoesNotExistError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
    )
    with pytest.raises(lost), caplog.at_level(logging.WARNING, logger="hookbus"):
        async with hookbus_asyncpg.transaction(db) as tx:
            await tx.connection.execute("INSERT INTO items VALUES (1)")
            tx.add(Recorded(log, "a"))
            pid = await backend_pid(tx.connection)
            assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
            await tx.connection.execute("INSERT INTO items VALUES (2)")
    assert "ROLLBACK failed" not in caplog.text  # a lost connection needs none: no warning
    assert log == ["a.rollback"]
    assert await ids(db) == []


async def test_cancelled_in_the_body_rolls_back_and_propagates(db: asyncpg.Pool) -> None:
    log: list[str] = []
    async with holding_lock(db, LOCK):
        pids: asyncio.Queue[int] = asyncio.Queue()

        async def scope() -> None:
            async with hookbus_asyncpg.transaction(db) as tx:
                await tx.connection.execute("INSERT INTO items VALUES (1)")
                tx.add(Recorded(log, "a"))
                pids.put_nowait(await backend_pid(tx.connection))
                await tx.connection.execute("SELECT pg_advisory_xact_lock($1)", LOCK)

        task = asyncio.create_task(scope())
        await wait_until_blocked_on_lock(db, await pids.get())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert log == ["a.rollback"]
    assert await ids(db) == []


@pytest.mark.parametrize("limit", ["fail_after", "move_on_after", "asyncio.timeout"])
async def test_a_timeout_around_the_scope_does_not_cut_its_rollback_operations_short(
    db: asyncpg.Pool, limit: str
) -> None:
    # The deadline passes in the block; the rollback operation then waits on PostgreSQL (a
    # lock the test holds) while anyio, on asyncio, cancels the task again at every turn of
    # the loop: the operation runs to its end, and only then does the timeout take effect.
    log: list[str] = []
    pids: asyncio.Queue[int] = asyncio.Queue()

    class WaitsInRollback(hookbus.Operation):
        async def rollback(self) -> None:
            async with db.acquire() as conn:
                pids.put_nowait(await backend_pid(conn))
                log.append(
                    await conn.fetchval("SELECT 'waited'::text FROM pg_advisory_lock($1)", LOCK)
                )
                await conn.execute("SELECT pg_advisory_unlock($1)", LOCK)

    async def in_scope() -> None:
        async with hookbus_asyncpg.transaction(db) as tx:
            tx.add(WaitsInRollback())
            await tx.connection.execute("INSERT INTO items VALUES (1)")
            await asyncio.Event().wait()  # the deadline passes here

    async def scope() -> bool:
        if limit == "asyncio.timeout":
            async with asyncio.timeout(0.05):
                await in_scope()
        with getattr(anyio, limit)(0.05) as deadline:
            await in_scope()
        return deadline.cancelled_caught

    async with holding_lock(db, LOCK):
        task = asyncio.create_task(scope())
        waiting = asyncio.ensure_future(pids.get())
        await asyncio.wait({task, waiting}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        came = waiting.done()
        waiting.cancel()  # if it never came
        assert came and not task.done(), f"the rollback operation never waited: {log}"
        await wait_until_blocked_on_lock(db, waiting.result())  # the deadline is long past
        assert not task.done()
    if limit != "move_on_after":
        with pytest.raises(TimeoutError):
            await task
    else:
        assert await task  # move_on_after: the cancellation was caught at the deadline
    assert log == ["waited"]
    assert await ids(db) == []


# -- COMMIT ---------------------------------------------------------------------------------


async def test_backend_terminated_during_commit_finds_it_aborted(db: asyncpg.Pool) -> None:
    log: list[str] = []
    async with holding_lock(db, LOCK):
        task, _, pid = await start_gated_commit(db, log)
        assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(TransactionAbortedError, match="lost during COMMIT") as raised:
            await task
    assert raised.value.__cause__ is not None
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]
    assert await ids(db, "gated") == []


async def test_connection_lost_during_commit_that_committed_runs_postcommit(
    db: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    async with holding_lock(db, LOCK) as release:
        task, tx, _ = await start_gated_commit(db, log)
        tx.connection.terminate()  # the client side drops; the server carries on and commits
        await release()
        with caplog.at_level(logging.WARNING, logger="hookbus"):
            await task
    assert log == ["a.precommit", "a.postcommit"]
    assert tx.state is TransactionState.COMMITTED
    assert await ids(db, "gated") == [1]
    assert "committed" in caplog.text


async def test_lost_commit_without_a_pool_to_ask_is_unknown(
    dsn: str, conn: asyncpg.Connection
) -> None:
    log: list[str] = []
    await conn.execute(SCHEMA)
    victim = await asyncpg.connect(dsn)
    holder = await asyncpg.connect(dsn)
    pids: asyncio.Queue[int] = asyncio.Queue()

    async def scope() -> None:
        async with hookbus_asyncpg.transaction(victim) as tx:
            await victim.execute("INSERT INTO gated VALUES (1)")
            tx.add(Recorded(log, "a"))
            pids.put_nowait(await backend_pid(victim))

    try:
        async with holding_lock(holder, LOCK):
            task = asyncio.create_task(scope())
            pid = await pids.get()
            await wait_until_blocked_on_lock(conn, pid)
            await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
            with pytest.raises(hookbus.CommitOutcomeUnknownError, match="no pool"):
                await task
    finally:
        await holder.close()
        await victim.close()
    assert log == ["a.precommit"]


async def test_cancelled_while_commit_in_flight_commits_then_propagates(
    db: asyncpg.Pool,
) -> None:
    log: list[str] = []
    async with holding_lock(db, LOCK) as release:
        task, _, _ = await start_gated_commit(db, log)
        task.cancel()
        await asyncio.sleep(0)  # deliver the cancellation while COMMIT waits on the lock
        await release()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert log == ["a.precommit", "a.postcommit"]
    assert await ids(db, "gated") == [1]


# -- savepoints -----------------------------------------------------------------------------


async def test_savepoints(db: asyncpg.Pool) -> None:
    log: list[str] = []
    async with hookbus_asyncpg.transaction(db) as tx:
        await tx.connection.execute("INSERT INTO items VALUES (1)")
        with pytest.raises(asyncpg.UniqueViolationError):
            async with tx.savepoint():
                await tx.connection.execute("INSERT INTO items VALUES (2)")
                tx.add(Recorded(log, "dropped"))
                tx.mark_added(2)
                await tx.connection.execute("INSERT INTO items VALUES (1)")
        assert not tx.added(2)
        async with tx.savepoint():
            await tx.connection.execute("INSERT INTO items VALUES (3)")
            tx.add(Recorded(log, "kept"))
            async with tx.savepoint():
                await tx.connection.execute("INSERT INTO items VALUES (4)")
    assert log == ["dropped.rollback", "kept.precommit", "kept.postcommit"]
    assert await ids(db) == [1, 3, 4]


# -- scale ----------------------------------------------------------------------------------


async def test_300_concurrent_scopes_on_a_pool_of_10(db: asyncpg.Pool) -> None:
    seen: list[bool] = []

    class OwnScope(hookbus.Operation):
        def __init__(self, tx: hookbus.Transaction) -> None:
            super().__init__()
            self.tx = tx

        async def precommit(self) -> None:
            seen.append(hookbus.current_transaction() is self.tx)
            await asyncio.sleep(0)

        async def postcommit(self) -> None:
            seen.append(hookbus.current_transaction() is self.tx)

    async def one(i: int) -> None:
        async with hookbus_asyncpg.transaction(db) as tx:
            await tx.connection.execute("INSERT INTO items VALUES ($1)", i)
            tx.add(OwnScope(tx))

    await asyncio.gather(*(one(i) for i in range(300)))
    assert len(seen) == 600 and all(seen)
    assert await db.fetchval("SELECT count(*) FROM items") == 300


async def test_a_savepoint_whose_release_fails_drops_what_it_scheduled(db: asyncpg.Pool) -> None:
    log: list[str] = []
    async with hookbus_asyncpg.transaction(db) as tx:
        with pytest.raises(asyncpg.InFailedSQLTransactionError):
            async with tx.savepoint():
                tx.add(Recorded(log, "inner"))
                await tx.connection.execute("INSERT INTO items VALUES (1)")
                with contextlib.suppress(asyncpg.UndefinedTableError):
                    await tx.connection.execute("SELECT * FROM no_such_table")
        # ROLLBACK TO made the transaction usable again, without the block's work
        await tx.connection.execute("INSERT INTO items VALUES (2)")
        tx.add(Recorded(log, "outer"))
    assert log == ["inner.rollback", "outer.precommit", "outer.postcommit"]
    assert await ids(db) == [2]
