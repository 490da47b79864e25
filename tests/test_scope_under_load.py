"""The scope under a back end's load: the connection back before postcommit, a cancellable
postcommit, a lazy begin, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

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
    wait_until_blocked_on_lock,
)
from _recording import Recorded
from hookbus_asyncpg import Attribute, EntityType, Schema, Store

import hookbus
from hookbus import TransactionState

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY);
CREATE TABLE IF NOT EXISTS seen (id int PRIMARY KEY);
TRUNCATE items, seen;
DROP TABLE IF EXISTS gated, hookbus_entities CASCADE;
"""


@pytest_asyncio.fixture
async def small_pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool of 5 connections, on empty tables."""
    async with asyncpg.create_pool(dsn, min_size=1, max_size=5) as pool:
        await pool.execute(SCHEMA)
        yield pool
        await assert_pool_hands_out_everything(pool)


class Borrow(hookbus.Operation):
    """A postcommit that takes a connection from ``pool``: the scope's own pool."""

    def __init__(self, pool: asyncpg.Pool, row: int) -> None:
        super().__init__()
        self.pool, self.row = pool, row

    async def postcommit(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute("INSERT INTO seen VALUES ($1)", self.row)


async def test_postcommits_borrowing_from_a_full_pool_all_finish(
    small_pool: asyncpg.Pool,
) -> None:
    # 20 scopes on a pool of 5, each postcommit taking a connection from the same pool: the
    # scope's own connection is back in the pool before its postcommit runs.
    async def scope(row: int) -> None:
        async with hookbus_asyncpg.transaction(small_pool) as tx:
            await tx.connection.execute("INSERT INTO items VALUES ($1)", row)
            tx.add(Borrow(small_pool, row))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            for row in range(20):
                group.start_soon(scope, row)
    assert await ids(small_pool) == list(range(20))
    assert await ids(small_pool, "seen") == list(range(20))  # once per committed scope


async def test_postcommit_runs_with_the_connection_back_in_its_pool(
    small_pool: asyncpg.Pool,
) -> None:
    sizes: list[int] = []

    class Count(hookbus.Operation):
        async def postcommit(self) -> None:
            sizes.append(small_pool.get_idle_size())

    async with hookbus_asyncpg.transaction(small_pool) as tx:
        await tx.connection.execute("INSERT INTO items VALUES (1)")
        idle = small_pool.get_idle_size()
        tx.add(Count())
    assert sizes == [idle + 1]


async def test_a_cancelled_postcommit_is_logged_as_not_run(
    small_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    started, log = asyncio.Event(), []

    class Slow(hookbus.Operation):
        async def postcommit(self) -> None:
            started.set()
            await asyncio.Event().wait()  # never set: only a cancellation ends it
            log.append("slow")

    class After(hookbus.Operation):
        async def postcommit(self) -> None:
            log.append("after")

    async def scope() -> hookbus.Transaction:
        async with hookbus_asyncpg.transaction(small_pool) as tx:
            await tx.connection.execute("INSERT INTO items VALUES (1)")
            tx.add(Slow())
            tx.add(After())
        raise AssertionError("not reached")

    task = asyncio.create_task(scope())
    await started.wait()
    with caplog.at_level(logging.WARNING, logger="hookbus"):
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert log == []
    assert await ids(small_pool) == [1]  # committed
    assert "postcommit cancelled after COMMIT (data committed): not run for" in caplog.text
    assert "Slow" in caplog.text and "After" in caplog.text


async def test_a_cancellation_during_commit_still_runs_postcommit_then_propagates(
    small_pool: asyncpg.Pool,
) -> None:
    # A cancellation that arrives while COMMIT is in flight waits for COMMIT's outcome; the
    # postcommit then runs (it had not started when the cancellation came), and the
    # cancellation propagates after it.
    log: list[str] = []

    class Record(hookbus.Operation):
        async def precommit(self) -> None:
            asyncio.get_running_loop().call_soon(task.cancel)

        async def postcommit(self) -> None:
            log.append("postcommit")

    async def scope() -> None:
        try:
            async with hookbus_asyncpg.transaction(small_pool) as tx:
                await tx.connection.execute("INSERT INTO items VALUES (1)")
                tx.add(Record())
        finally:
            assert tx.state is TransactionState.COMMITTED

    task = asyncio.create_task(scope())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["postcommit"]
    assert await ids(small_pool) == [1]


# -- a lazy begin ------------------------------------------------------------------------------


class Counting(asyncpg.Connection):  # type: ignore[misc]
    """A connection that records every statement it is asked to send, in ``sent``."""

    sent: list[str] = []  # noqa: RUF012 (one list for the test's pool, cleared by the test)

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        self.sent.append(query)
        return await super().execute(query, *args, **kwargs)

    async def _execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        self.sent.append(query)
        return await super()._execute(query, *args, **kwargs)


@pytest_asyncio.fixture
async def counted(dsn: str) -> AsyncIterator[tuple[asyncpg.Pool, list[str], list[int]]]:
    """A pool whose connections record what they send, and the count of its acquisitions."""
    acquired: list[int] = []

    async def setup(conn: asyncpg.Connection) -> None:
        acquired.append(1)

    async with asyncpg.create_pool(
        dsn, min_size=1, max_size=2, connection_class=Counting, setup=setup
    ) as pool:
        await pool.execute(SCHEMA)
        acquired.clear()
        Counting.sent.clear()
        yield pool, Counting.sent, acquired


async def test_a_scope_that_never_touches_the_database_sends_nothing(
    counted: tuple[asyncpg.Pool, list[str], list[int]],
) -> None:
    pool, sent, acquired = counted
    log: list[str] = []
    async with hookbus_asyncpg.transaction(pool) as tx:
        tx.add(Recorded(log, "a"))
        tx.data["seen"] = True
    assert (sent, acquired) == ([], [])  # no connection taken, no statement sent
    assert log == ["a.precommit", "a.postcommit"]
    assert tx.state is TransactionState.COMMITTED and not tx.begun

    with pytest.raises(KeyError):
        async with hookbus_asyncpg.transaction(pool) as tx:
            tx.add(Recorded(log, "b"))
            raise KeyError("body")
    assert (sent, acquired) == ([], [])
    assert log[-1] == "b.rollback"


async def test_the_first_statement_takes_the_connection_and_begins(
    counted: tuple[asyncpg.Pool, list[str], list[int]],
) -> None:
    pool, sent, acquired = counted
    async with hookbus_asyncpg.transaction(pool) as tx:
        conn = tx.connection  # usable before the first statement
        with pytest.raises(hookbus.TransactionStateError, match=r"await tx\.connect"):
            conn.get_server_pid()  # needs the connection, which is not taken yet
        assert sent == [] and not tx.begun
        await conn.execute("INSERT INTO items VALUES (1)")
        assert tx.begun and len(acquired) == 1
        assert tx.connection.is_in_transaction()
        await conn.execute("INSERT INTO items VALUES (2)")  # the same connection
        async with hookbus_asyncpg.transaction(conn):  # joins, as on tx.connection
            await tx.connection.execute("INSERT INTO items VALUES (3)")
    assert sent[0] == "BEGIN" and sent[1] == "INSERT INTO items VALUES (1)"
    assert len(acquired) == 1
    assert await ids(pool) == [1, 2, 3]


async def test_a_nested_scope_that_never_touches_the_database_sends_nothing(
    counted: tuple[asyncpg.Pool, list[str], list[int]],
) -> None:
    pool, sent, acquired = counted
    log: list[str] = []
    async with hookbus_asyncpg.transaction(pool) as tx:
        async with hookbus_asyncpg.transaction(pool):  # a savepoint, kept for BEGIN
            tx.add(Recorded(log, "kept"))
        with pytest.raises(KeyError):
            async with hookbus_asyncpg.transaction(pool), tx.savepoint():
                tx.add(Recorded(log, "undone"))
                tx.mark_added(7)
                raise KeyError("inner")
        assert not tx.added(7) and len(tx.operations) == 1
    assert (sent, acquired) == ([], [])  # no connection taken, no statement sent
    assert log == ["undone.rollback", "kept.precommit", "kept.postcommit"]


async def test_a_statement_inside_waiting_savepoints_sets_them_after_begin(
    counted: tuple[asyncpg.Pool, list[str], list[int]],
) -> None:
    pool, sent, acquired = counted
    async with hookbus_asyncpg.transaction(pool) as tx:
        await tx.connection.execute("INSERT INTO items VALUES (1)")  # begins: eager from now
    sent.clear()
    async with hookbus_asyncpg.transaction(pool) as tx:
        with pytest.raises(KeyError):
            async with hookbus_asyncpg.transaction(pool):
                async with tx.savepoint():
                    await tx.connection.execute("INSERT INTO items VALUES (2)")
                raise KeyError("undo the outer savepoint")
        await tx.connection.execute("INSERT INTO items VALUES (3)")
    assert sent[:4] == [
        "BEGIN",
        'SAVEPOINT "hookbus_sp_1"',
        'SAVEPOINT "hookbus_sp_2"',
        "INSERT INTO items VALUES (2)",
    ]
    assert len(acquired) == 2
    assert await ids(pool) == [1, 3]  # the rolled back savepoint undid the row it held


async def test_a_precommit_that_writes_begins_the_scope(dsn: str, small_pool: asyncpg.Pool) -> None:
    class Writes(hookbus.Operation):
        async def precommit(self) -> None:
            tx = hookbus.current_transaction()
            assert isinstance(tx, hookbus_asyncpg.AsyncpgTransaction)
            await tx.connection.execute("INSERT INTO items VALUES (7)")

    async with hookbus_asyncpg.transaction(small_pool) as tx:
        tx.add(Writes())
        assert not tx.begun
    assert await ids(small_pool) == [7]


async def test_a_timeout_during_the_lazy_begin_leaves_the_scope_able_to_commit(dsn: str) -> None:
    log: list[str] = []
    async with asyncpg.create_pool(dsn, min_size=0, max_size=1) as pool:
        await pool.execute(SCHEMA)
        held = await pool.acquire()
        async with hookbus_asyncpg.transaction(pool) as tx:
            tx.add(Recorded(log, "a"))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):  # the pool is empty: BEGIN never comes
                    await tx.connection.execute("INSERT INTO items VALUES (1)")
            assert not tx.begun and tx.state is TransactionState.ACTIVE
            await pool.release(held)
            await tx.connection.execute("INSERT INTO items VALUES (2)")  # begins now
        assert log == ["a.precommit", "a.postcommit"]
        assert await ids(pool) == [2]
        await assert_pool_hands_out_everything(pool)


# -- the transaction id from the first write -----------------------------------------------------

LOCK = 4545  # the advisory lock the gated entity table's deferred trigger waits for at COMMIT
GATED = Schema(entities=[EntityType("Gated", n=Attribute(int))])


async def test_a_store_insert_carries_the_id_and_commit_is_plain(
    counted: tuple[asyncpg.Pool, list[str], list[int]],
) -> None:
    pool, sent, _ = counted
    store = Store(hookbus.Bus(), GATED)
    await store.create_tables(pool)
    sent.clear()
    async with hookbus_asyncpg.transaction(pool):
        await store.insert("Gated", n=1)
    assert "COMMIT" in sent  # a plain COMMIT: no id block, no notice
    assert not [s for s in sent if "hookbus xid" in s]


async def test_an_outbox_publish_sends_its_row_with_commit(
    counted: tuple[asyncpg.Pool, list[str], list[int]], dsn: str
) -> None:
    import msgspec

    class Shipped(msgspec.Struct):
        order: int

    bus = hookbus.Bus()
    bus.declare("shipped", Shipped)
    async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as installing:
        plugins = hookbus.PluginSet(bus, [hookbus_asyncpg.outbox_plugin()])
        await hookbus_asyncpg.PluginManager(installing, plugins).install()
    pool, sent, _ = counted
    outbox = hookbus_asyncpg.Outbox(bus)
    sent.clear()
    async with hookbus_asyncpg.transaction(pool) as tx:
        await tx.connection.execute("INSERT INTO items VALUES (1)")
        await outbox.publish(tx, "shipped", Shipped(1))
    with_row, sent[:] = sent[:], []
    async with hookbus_asyncpg.transaction(pool) as tx:
        await tx.connection.execute("INSERT INTO items VALUES (2)")
    # no round trip of its own: the row goes in COMMIT's message, before the id's notice
    assert len(with_row) == len(sent)
    (commit,) = [query for query in with_row if query.endswith("COMMIT")]
    assert commit.startswith("INSERT INTO hookbus_outbox")
    assert commit.index("NOTIFY hookbus_outbox") < commit.index("hookbus xid")
    assert await pool.fetchval("SELECT count(*) FROM hookbus_outbox") == 1


async def test_a_lost_commit_after_a_store_insert_is_found(small_pool: asyncpg.Pool) -> None:
    store = Store(hookbus.Bus(), GATED)
    await store.create_tables(small_pool)
    await small_pool.execute(gate_at_commit("gated", LOCK))
    log: list[str] = []
    started: asyncio.Queue[tuple[hookbus_asyncpg.AsyncpgTransaction, int]] = asyncio.Queue()

    async def scope() -> None:
        async with hookbus_asyncpg.transaction(small_pool) as tx:
            await store.insert("Gated", n=1)
            tx.add(Recorded(log, "a"))
            started.put_nowait((tx, await backend_pid(tx.connection)))

    async with holding_lock(small_pool, LOCK) as release:
        task = asyncio.create_task(scope())
        tx, pid = await started.get()
        await wait_until_blocked_on_lock(small_pool, pid)
        tx.connection.terminate()  # the client side drops; the server carries on and commits
        await release()
        await task
    assert log == ["a.precommit", "a.postcommit"]
    assert tx.state is TransactionState.COMMITTED
    assert [r[0] for r in await small_pool.fetch("SELECT n FROM gated")] == [1]


async def test_a_store_insert_lost_before_commit_ran_rolls_back(small_pool: asyncpg.Pool) -> None:
    store = Store(hookbus.Bus(), GATED)
    await store.create_tables(small_pool)
    await small_pool.execute(gate_at_commit("gated", LOCK))
    log: list[str] = []
    started: asyncio.Queue[tuple[hookbus_asyncpg.AsyncpgTransaction, int]] = asyncio.Queue()

    async def scope() -> None:
        async with hookbus_asyncpg.transaction(small_pool) as tx:
            await store.insert("Gated", n=2)
            tx.add(Recorded(log, "a"))
            started.put_nowait((tx, await backend_pid(tx.connection)))

    async with holding_lock(small_pool, LOCK):
        task = asyncio.create_task(scope())
        _, pid = await started.get()
        await wait_until_blocked_on_lock(small_pool, pid)
        assert await small_pool.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(hookbus.TransactionAbortedError):
            await task
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]
    assert await small_pool.fetch("SELECT n FROM gated") == []
