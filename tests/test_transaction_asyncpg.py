"""The fault matrix of the asyncpg scope, against a real PostgreSQL.

For each phase and failure: which callbacks ran, in which order, and what the database holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg
import hookbus_asyncpg
import pytest
import pytest_asyncio
from _recording import Recorded

import hookbus
from hookbus import TransactionAbortedError, TransactionState, ValidationError

LOCK = 4242  # the advisory lock the gated table's deferred trigger waits for at COMMIT

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, note text);
CREATE TABLE IF NOT EXISTS parent (id int PRIMARY KEY);
CREATE TABLE IF NOT EXISTS child (
    id int PRIMARY KEY,
    parent_id int REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED
);
CREATE TABLE IF NOT EXISTS gated (id int PRIMARY KEY);
CREATE OR REPLACE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({LOCK});
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS gate_at_commit ON gated;
CREATE CONSTRAINT TRIGGER gate_at_commit AFTER INSERT ON gated
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION gate();
TRUNCATE items, child, parent, gated;
"""


@pytest_asyncio.fixture
async def db(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """The pool, on empty tables."""
    await pool.execute(SCHEMA)
    yield pool
    await assert_pool_hands_out_everything(pool)


async def assert_pool_hands_out_everything(pool: asyncpg.Pool) -> None:
    held = [await pool.acquire(timeout=5) for _ in range(pool.get_max_size())]
    for conn in held:
        assert not conn.is_in_transaction()
        await pool.release(conn)


async def ids(pool: asyncpg.Pool, table: str = "items") -> list[int]:
    return [r[0] for r in await pool.fetch(f"SELECT id FROM {table} ORDER BY id")]


async def wait_until_blocked_on_lock(pool: asyncpg.Pool | asyncpg.Connection, pid: int) -> None:
    """Wait until backend ``pid`` waits for a lock (PostgreSQL offers nothing to await)."""
    query = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1"
    for _ in range(500):
        if await pool.fetchval(query, pid) == "Lock":
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} never blocked")


async def start_gated_commit(
    db: asyncpg.Pool, log: list[str]
) -> tuple[asyncio.Task[None], hookbus_asyncpg.AsyncpgTransaction]:
    """Start a scope that inserts into ``gated`` and schedules ``Recorded(log, "a")``; return
    once its COMMIT waits on the advisory lock the caller holds (a deferred trigger takes it).
    """
    txs: asyncio.Queue[hookbus_asyncpg.AsyncpgTransaction] = asyncio.Queue()

    async def scope() -> None:
        async with hookbus_asyncpg.transaction(db) as tx:
            await tx.connection.execute("INSERT INTO gated VALUES (1)")
            tx.add(Recorded(log, "a"))
            txs.put_nowait(tx)

    task = asyncio.create_task(scope())
    tx = await txs.get()
    await wait_until_blocked_on_lock(db, tx.connection.get_server_pid())
    return task, tx


# -- commit ---------------------------------------------------------------------------------


async def test_commit_writes_and_runs_precommit_then_postcommit(db: asyncpg.Pool) -> None:
    log: list[str] = []
    async with hookbus_asyncpg.transaction(db) as tx:
        await tx.connection.execute("INSERT INTO items VALUES (1), (2)")
        tx.add(Recorded(log, "a"))
        tx.add(Recorded(log, "b"))
    assert log == ["a.precommit", "b.precommit", "a.postcommit", "b.postcommit"]
    assert await ids(db) == [1, 2]
    assert tx.state is TransactionState.COMMITTED


async def test_options_reach_begin(db: asyncpg.Pool) -> None:
    async with hookbus_asyncpg.transaction(db, isolation="serializable", readonly=True) as tx:
        assert await tx.connection.fetchval("SHOW transaction_isolation") == "serializable"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await tx.connection.execute("INSERT INTO items VALUES (1)")
        await tx.rollback()
    with pytest.raises(ValueError, match="isolation must be one of"):
        hookbus_asyncpg.transaction(db, isolation="chaos")  # type: ignore[arg-type]


async def test_a_given_connection_is_used_and_kept(conn: asyncpg.Connection) -> None:
    await conn.execute(SCHEMA)
    async with hookbus_asyncpg.transaction(conn) as tx:
        assert tx.connection is conn
        await conn.execute("INSERT INTO items VALUES (5)")
    assert await conn.fetchval("SELECT count(*) FROM items WHERE id = 5") == 1
    assert not conn.is_closed()


# -- body -----------------------------------------------------------------------------------


@pytest.mark.parametrize("exc", [ValidationError(1, {"note": "bad"}), RuntimeError("boom")])
async def test_body_raises_rolls_back(db: asyncpg.Pool, exc: Exception) -> None:
    log: list[str] = []
    with pytest.raises(type(exc)):
        async with hookbus_asyncpg.transaction(db) as tx:
            await tx.connection.execute("INSERT INTO items VALUES (1)")
            tx.add(Recorded(log, "a"))
            raise exc
    assert log == ["a.rollback"]
    assert await ids(db) == []


async def test_explicit_rollback(db: asyncpg.Pool) -> None:
    log: list[str] = []
    async with hookbus_asyncpg.transaction(db) as tx:
        await tx.connection.execute("INSERT INTO items VALUES (1)")
        tx.add(Recorded(log, "a"))
        await tx.rollback()
    assert log == ["a.rollback"]
    assert await ids(db) == []


async def test_backend_terminated_in_the_body_runs_the_rollback_path(db: asyncpg.Pool) -> None:
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
    with pytest.raises(lost):
        async with hookbus_asyncpg.transaction(db) as tx:
            await tx.connection.execute("INSERT INTO items VALUES (1)")
            tx.add(Recorded(log, "a"))
            pid = tx.connection.get_server_pid()
            assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
            await tx.connection.execute("INSERT INTO items VALUES (2)")
    assert log == ["a.rollback"]
    assert await ids(db) == []


async def test_cancelled_in_the_body_rolls_back_and_propagates(db: asyncpg.Pool) -> None:
    log: list[str] = []
    async with db.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK)
        pids: asyncio.Queue[int] = asyncio.Queue()

        async def scope() -> None:
            async with hookbus_asyncpg.transaction(db) as tx:
                await tx.connection.execute("INSERT INTO items VALUES (1)")
                tx.add(Recorded(log, "a"))
                pids.put_nowait(tx.connection.get_server_pid())
                await tx.connection.execute("SELECT pg_advisory_xact_lock($1)", LOCK)

        task = asyncio.create_task(scope())
        await wait_until_blocked_on_lock(db, await pids.get())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await holder.execute("SELECT pg_advisory_unlock($1)", LOCK)
    assert log == ["a.rollback"]
    assert await ids(db) == []


async def test_swallowed_sql_error_is_seen_and_aborts(db: asyncpg.Pool) -> None:
    log: list[str] = []
    with pytest.raises(TransactionAbortedError, match="answered COMMIT with ROLLBACK"):
        async with hookbus_asyncpg.transaction(db) as tx:
            await tx.connection.execute("INSERT INTO items VALUES (1)")
            tx.add(Recorded(log, "a"))
            with contextlib.suppress(asyncpg.UniqueViolationError):
                # Swallowed: PostgreSQL has aborted the transaction all the same.
                await tx.connection.execute("INSERT INTO items VALUES (1)")
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]
    assert await ids(db) == []


# -- precommit ------------------------------------------------------------------------------


@pytest.mark.parametrize("exc", [ValidationError(1, {"note": "bad"}), RuntimeError("boom")])
async def test_precommit_raises_reverts_rolls_back(db: asyncpg.Pool, exc: Exception) -> None:
    log: list[str] = []

    class Writes(Recorded):
        async def precommit(self) -> None:
            await hookbus_conn().execute("INSERT INTO items VALUES (2)")
            await super().precommit()

    with pytest.raises(type(exc)) as raised:
        async with hookbus_asyncpg.transaction(db) as tx:
            await tx.connection.execute("INSERT INTO items VALUES (1)")
            tx.add(Writes(log, "a"))
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
    assert await ids(db) == []


def hookbus_conn() -> asyncpg.Connection:
    tx = hookbus.current_transaction()
    assert isinstance(tx, hookbus_asyncpg.AsyncpgTransaction)
    return tx.connection


async def test_precommit_added_ops_and_late_and_last(db: asyncpg.Pool) -> None:
    log: list[str] = []

    class Spawner(Recorded):
        async def precommit(self) -> None:
            await super().precommit()
            hookbus.current_transaction().add(Recorded(log, "spawned"))

    from _recording import LastRecorded, LateRecorded

    async with hookbus_asyncpg.transaction(db) as tx:
        tx.add(LastRecorded(log, "last-1"))
        tx.add(LateRecorded(log, "late"))
        tx.add(Spawner(log, "spawner"))
        tx.add(LastRecorded(log, "last-2"))
    assert [e for e in log if e.endswith("precommit")] == [
        "spawner.precommit",
        "spawned.precommit",
        "late.precommit",
        "last-2.precommit",
    ]


# -- COMMIT ---------------------------------------------------------------------------------


async def test_deferred_constraint_at_commit_rolls_back_without_postcommit(
    db: asyncpg.Pool,
) -> None:
    log: list[str] = []
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        async with hookbus_asyncpg.transaction(db) as tx:
            await tx.connection.execute("INSERT INTO items VALUES (1)")
            await tx.connection.execute("INSERT INTO child VALUES (1, 999)")
            tx.add(Recorded(log, "a"))
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]
    assert await ids(db) == [] and await ids(db, "child") == []


async def test_serialization_failure_at_commit(db: asyncpg.Pool) -> None:
    logs: dict[str, list[str]] = {"first": [], "second": []}
    first_wrote, second_read, second_wrote = asyncio.Event(), asyncio.Event(), asyncio.Event()
    first_done = asyncio.Event()

    async def first() -> None:
        async with hookbus_asyncpg.transaction(db, isolation="serializable") as tx:
            await tx.connection.fetchval("SELECT count(*) FROM items WHERE id < 100")
            await second_read.wait()
            await tx.connection.execute("INSERT INTO items VALUES (100)")
            tx.add(Recorded(logs["first"], "op"))
            first_wrote.set()
            await second_wrote.wait()  # both wrote before either commits: COMMIT decides
        first_done.set()

    async def second() -> None:
        async with hookbus_asyncpg.transaction(db, isolation="serializable") as tx:
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
    assert await ids(db) == [100]


async def test_backend_terminated_during_commit_finds_it_aborted(db: asyncpg.Pool) -> None:
    log: list[str] = []
    async with db.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK)
        task, tx = await start_gated_commit(db, log)
        pid = tx.connection.get_server_pid()
        assert await holder.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(TransactionAbortedError, match="lost during COMMIT") as raised:
            await task
        await holder.execute("SELECT pg_advisory_unlock($1)", LOCK)
    assert raised.value.__cause__ is not None
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]
    assert await ids(db, "gated") == []


async def test_connection_lost_during_commit_that_committed_runs_postcommit(
    db: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    async with db.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK)
        task, tx = await start_gated_commit(db, log)
        tx.connection.terminate()  # the client side drops; the server carries on and commits
        await holder.execute("SELECT pg_advisory_unlock($1)", LOCK)
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
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK)

    async def scope() -> None:
        async with hookbus_asyncpg.transaction(victim) as tx:
            await victim.execute("INSERT INTO gated VALUES (1)")
            tx.add(Recorded(log, "a"))

    task = asyncio.create_task(scope())
    try:
        await wait_until_blocked_on_lock(conn, victim.get_server_pid())
        await conn.fetchval("SELECT pg_terminate_backend($1)", victim.get_server_pid())
        with pytest.raises(hookbus.CommitOutcomeUnknownError, match="no pool"):
            await task
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK)
        await victim.close()
    assert log == ["a.precommit"]


async def test_cancelled_while_commit_in_flight_commits_then_propagates(
    db: asyncpg.Pool,
) -> None:
    log: list[str] = []
    async with db.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK)
        task, _ = await start_gated_commit(db, log)
        task.cancel()
        await asyncio.sleep(0)  # deliver the cancellation while COMMIT waits on the lock
        await holder.execute("SELECT pg_advisory_unlock($1)", LOCK)
        with pytest.raises(asyncio.CancelledError):
            await task
    assert log == ["a.precommit", "a.postcommit"]
    assert await ids(db, "gated") == [1]


# -- postcommit -----------------------------------------------------------------------------


async def test_postcommit_raises_is_logged_counted_and_the_rest_run(
    db: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    with caplog.at_level(logging.ERROR, logger="hookbus"):
        async with hookbus_asyncpg.transaction(db) as tx:
            await tx.connection.execute("INSERT INTO items VALUES (1)")
            tx.add(Recorded(log, "a", fail="postcommit"))
            tx.add(Recorded(log, "b"))
    assert log == ["a.precommit", "b.precommit", "a.postcommit", "b.postcommit"]
    assert tx.postcommit_errors == 1
    assert await ids(db) == [1]
    assert "a failed in postcommit" in caplog.text


# -- rollback operations failing ------------------------------------------------------------


async def test_rollback_operation_raising_never_masks_the_original(db: asyncpg.Pool) -> None:
    log: list[str] = []
    with pytest.raises(KeyError):
        async with hookbus_asyncpg.transaction(db) as tx:
            await tx.connection.execute("INSERT INTO items VALUES (1)")
            tx.add(Recorded(log, "a", fail="rollback"))
            tx.add(Recorded(log, "b"))
            raise KeyError("original")
    assert log == ["a.rollback", "b.rollback"]
    assert await ids(db) == []


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


async def test_accumulate_100000_values_is_one_operation(db: asyncpg.Pool) -> None:
    class InsertAll(hookbus.Operation):
        async def precommit(self) -> None:
            await hookbus_conn().execute(
                "INSERT INTO items SELECT unnest($1::int[])", sorted(self.values)
            )

    async with hookbus_asyncpg.transaction(db) as tx:
        for i in range(100_000):
            tx.accumulate("items", i, InsertAll)
        assert len(tx.operations) == 1
    assert await db.fetchval("SELECT count(*) FROM items") == 100_000


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
