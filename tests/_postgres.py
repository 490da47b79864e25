"""Helpers of the tests that drive the asyncpg scope against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

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


@contextlib.asynccontextmanager
async def holding_lock(
    pool: asyncpg.Pool | asyncpg.Connection, lock: int
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Hold the advisory lock ``lock`` in a transaction kept open on a connection of its own
    (taken from ``pool``, or ``pool`` itself when it is a connection); give a function that
    releases it by ending that transaction (it is ended on exit anyway).

    A transaction and not a session lock: behind pgbouncer in transaction pooling, a
    connection outside a transaction goes back to pgbouncer's pool, and the next statement
    may run on another server session than the one holding a session lock.
    """
    async with contextlib.AsyncExitStack() as stack:
        conn = (
            pool
            if isinstance(pool, asyncpg.Connection)
            else await stack.enter_async_context(pool.acquire())
        )
        transaction = conn.transaction()
        await transaction.start()
        released = False

        async def release() -> None:
            nonlocal released
            if not released:
                released = True
                await transaction.rollback()

        try:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", lock)
            yield release
        finally:
            await release()


async def backend_pid(conn: asyncpg.Connection) -> int:
    """The pid of the server session running ``conn``'s current transaction, asked inside it:
    behind pgbouncer, ``get_server_pid()`` is pgbouncer's own key and names no backend."""
    pid: int = await conn.fetchval("SELECT pg_backend_pid()")
    return pid


async def start_gated_commit(
    pool: asyncpg.Pool,
    log: list[str],
    *,
    table: str = "gated",
    watcher: asyncpg.Pool | None = None,
) -> tuple[asyncio.Task[None], hookbus_asyncpg.AsyncpgTransaction, int]:
    """Start a scope on ``pool`` that inserts 1 into ``table`` and schedules
    ``Recorded(log, "a")``; return once its COMMIT waits on the advisory lock the caller holds
    (a deferred trigger of ``table`` takes it), as ``watcher`` (else ``pool``) sees it, with
    the scope's task, its transaction and the pid of its server session.
    """
    started: asyncio.Queue[tuple[hookbus_asyncpg.AsyncpgTransaction, int]] = asyncio.Queue()

    async def scope() -> None:
        async with hookbus_asyncpg.transaction(pool) as tx:
            await tx.connection.execute(f"INSERT INTO {table} VALUES (1)")
            tx.add(Recorded(log, "a"))
            started.put_nowait((tx, await backend_pid(tx.connection)))

    task = asyncio.create_task(scope())
    tx, pid = await started.get()
    await wait_until_blocked_on_lock(watcher or pool, pid)
    return task, tx, pid
