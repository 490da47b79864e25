"""Helpers of the tests that drive the asyncpg scope against a real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import hookbus_asyncpg
from _recording import Recorded


def gate_at_commit(table: str, lock: int) -> str:
    """SQL: a deferred trigger on ``table`` that takes the advisory lock ``lock`` at COMMIT, so
    that a test holding that lock holds a scope's COMMIT in flight."""
    return f"""\
CREATE OR REPLACE FUNCTION gate_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({lock});
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS gate_{table}_at_commit ON {table};
CREATE CONSTRAINT TRIGGER gate_{table}_at_commit AFTER INSERT ON {table}
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION gate_{table}();"""


async def ids(pool: asyncpg.Pool | asyncpg.Connection, table: str = "items") -> list[int]:
    """The ids of ``table``, in order."""
    return [r[0] for r in await pool.fetch(f"SELECT id FROM {table} ORDER BY id")]


async def assert_pool_hands_out_everything(pool: asyncpg.Pool) -> None:
    """Every connection of the pool can be held at once, and none is left in a transaction."""
    held = [await pool.acquire(timeout=5) for _ in range(pool.get_max_size())]
    for conn in held:
        assert not conn.is_in_transaction()
        await pool.release(conn)


async def wait_until_blocked_on_lock(pool: asyncpg.Pool | asyncpg.Connection, pid: int) -> None:
    """Wait (10 s at most) until backend ``pid`` waits for a lock: PostgreSQL offers nothing
    to await."""
    query = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1"
    for _ in range(1000):
        if await pool.fetchval(query, pid) == "Lock":
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} never blocked")


async def start_gated_commit(
    pool: asyncpg.Pool,
    log: list[str],
    *,
    table: str = "gated",
    watcher: asyncpg.Pool | None = None,
) -> tuple[asyncio.Task[None], hookbus_asyncpg.AsyncpgTransaction]:
    """Start a scope on ``pool`` that inserts 1 into ``table`` and schedules
    ``Recorded(log, "a")``; return once its COMMIT waits on the advisory lock the caller holds
    (a deferred trigger of ``table`` takes it), as ``watcher`` (else ``pool``) sees it.
    """
    txs: asyncio.Queue[hookbus_asyncpg.AsyncpgTransaction] = asyncio.Queue()

    async def scope() -> None:
        async with hookbus_asyncpg.transaction(pool) as tx:
            await tx.connection.execute(f"INSERT INTO {table} VALUES (1)")
            tx.add(Recorded(log, "a"))
            txs.put_nowait(tx)

    task = asyncio.create_task(scope())
    tx = await txs.get()
    await wait_until_blocked_on_lock(watcher or pool, tx.connection.get_server_pid())
    return task, tx
