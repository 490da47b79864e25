"""The ordered relay's gate on the real PostgreSQL: it waits for the open transactions that
may write to its own database, and only for those; it names the one that holds it; it reads
rows in ``(xid, id)`` order whatever the xids' number of digits."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import asyncpg
import hookbus_asyncpg
import pytest
import pytest_asyncio
from _nats import Stream
from _outbox import OrderPlaced, bus_fixture, outbox_pool_fixture  # noqa: F401 (fixtures)
from hookbus_asyncpg import Outbox
from hookbus_asyncpg.testing import create_database, drop_database
from hookbus_nats._relay_sql import Cursor, holdback, read_batch
from nats.aio.client import Client
from nats.js import JetStreamContext
from test_relay import make_relay, orders_of, publish, received, running, stored, until

from hookbus import Bus


@pytest.fixture
def outbox(bus: Bus, stream: Stream) -> Outbox:
    return Outbox(bus, subject_prefix=stream.prefix)


@pytest_asyncio.fixture
async def elsewhere(server: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection idle in a transaction with an xid, on another database of the server."""
    other = await create_database(server, "relay_gate_other")
    try:
        conn = await asyncpg.connect(other)
        try:
            await conn.execute("SET application_name = 'other-database'")
            await conn.execute("BEGIN")
            await conn.fetchval("SELECT pg_current_xact_id()")  # an xid, older than the test's
            yield conn
        finally:
            await conn.close()
    finally:
        await drop_database(server, other)


async def still_open(pool: asyncpg.Pool, conn: asyncpg.Connection) -> bool:
    """Whether ``conn``'s transaction is still open with its xid, as the server sees it."""
    state = await pool.fetchval(
        "SELECT state FROM pg_stat_activity WHERE pid = $1 AND backend_xid IS NOT NULL",
        conn.get_server_pid(),
    )
    return state == "idle in transaction"


async def test_a_transaction_of_another_database_never_holds_the_relay_back(
    outbox_pool: asyncpg.Pool, dsn: str, jetstream: JetStreamContext, nats_client: Client,
    stream: Stream, outbox: Outbox, elsewhere: asyncpg.Connection,
) -> None:  # fmt: skip
    """The other database's transaction is the oldest of the server and stays open all
    along; a transaction of this database, open with a row of its own, holds the relay and
    is the one named; once it commits, both rows go out in ``(xid, id)`` order."""
    scope = hookbus_asyncpg.transaction(outbox_pool, independent=True)
    here = await scope.__aenter__()
    ended = False
    try:
        await here.connection.execute("SET application_name = 'this-database'")
        await outbox.publish(here, "order_placed", OrderPlaced(2))  # written at its COMMIT
        await here.connection.fetchval("SELECT pg_current_xact_id()")  # the lower xid
        # committed beside the open scope (a plain scope here would be a savepoint of it)
        async with hookbus_asyncpg.transaction(outbox_pool, independent=True) as tx:
            await outbox.publish(tx, "order_placed", OrderPlaced(1))
        pid = here.connection.get_server_pid()
        relay = make_relay(dsn, nats_client, stream)
        async with running(relay):

            def reported() -> bool:
                held = relay.stats().held_back
                return held is not None and held.pid == pid

            await until(reported, "this database's open transaction reported")
            held = relay.stats().held_back
            assert held is not None and held.rows == 1
            assert held.application_name == "this-database"
            assert f"pid {pid} (idle in transaction, this-database)" in held.describe()
            assert await stored(jetstream, stream) == 0
            ended = True
            await scope.__aexit__(None, None, None)
            assert orders_of(await received(jetstream, stream, 2)) == [2, 1]
            await until(lambda: relay.stats().held_back is None, "no longer held back")
            assert await still_open(outbox_pool, elsewhere)
    finally:
        if not ended:  # a failure above: roll back, or the pool waits for the connection
            failed = AssertionError("the test failed")
            await scope.__aexit__(AssertionError, failed, None)


@pytest_asyncio.fixture
async def plain_role(outbox_pool: asyncpg.Pool) -> AsyncIterator[str]:
    """An ordinary role (no pg_read_all_stats) that may read the outbox."""
    role = f"hookbus_plain_{secrets.token_hex(4)}"
    await outbox_pool.execute(f"CREATE ROLE {role} LOGIN")
    await outbox_pool.execute(f"GRANT SELECT ON hookbus_outbox TO {role}")
    try:
        yield role
    finally:
        await outbox_pool.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


async def test_an_ordinary_role_reads_past_another_databases_transaction(
    outbox_pool: asyncpg.Pool, dsn: str, plain_role: str, stream: Stream, outbox: Outbox,
    elsewhere: asyncpg.Connection,
) -> None:  # fmt: skip
    """``datid`` and ``backend_xid`` are shown to every role: a relay's role needs no
    pg_read_all_stats to pass another database's (here the superuser's) transaction."""
    await publish(outbox_pool, outbox, stream, 1)
    conn = await asyncpg.connect(dsn, user=plain_role)
    try:
        assert not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = user")
        rows = await read_batch(conn, Cursor(0, 0), 10)
        assert [row["id"] for row in rows] == [
            await outbox_pool.fetchval("SELECT id FROM hookbus_outbox")
        ]
        assert await holdback(conn, Cursor(0, 0)) is None
    finally:
        await conn.close()
    assert await still_open(outbox_pool, elsewhere)
