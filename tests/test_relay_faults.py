"""The relay when its surroundings fail: the listening connection killed, NATS gone.

The module runs on a PostgreSQL of its own (embedded): the relay reads rows only below the
oldest open transaction that may write to its database (before, of the whole server), and
the tests that wait for a NOTIFY to wake the relay wait on no other client's transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg
import hookbus_asyncpg
import msgspec
import pytest
from _nats import Stream, make_stream
from _nats_server import Server, connect, nats_fixture  # noqa: F401 (the fixture nats)
from _outbox import OrderPlaced, bus_fixture, outbox_pool_fixture  # noqa: F401 (fixtures)
from hookbus_asyncpg import Outbox
from hookbus_asyncpg.testing import ServerChoice
from hookbus_nats import Relay, RelayState, UnorderedRelay
from hookbus_nats import _relay as relay_module
from hookbus_nats import _relay_sql as relay_sql
from hookbus_nats._relay_sql import Cursor
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy

from hookbus import Bus


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """An embedded PostgreSQL for the module, in place of the session's (see above)."""
    with ServerChoice(None, "the module's own").start() as dsn:
        yield dsn


async def publish(pool: asyncpg.Pool, outbox: Outbox, *orders: int) -> None:
    async with hookbus_asyncpg.transaction(pool) as tx:
        for order in orders:
            await outbox.publish(tx, "order_placed", OrderPlaced(order))


async def until(check: Callable[[], bool], what: str, seconds: float = 60) -> None:
    """Wait for ``check()`` (60 s at most: on a shared server, another client's open
    transaction holds the relay back meanwhile); the relay's counters offer nothing to await."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.02)


async def listener_pid(pool: asyncpg.Pool) -> int | None:
    """The relay's listening connection: its last statement is the LISTEN, or the probe that
    follows every 10 s (``SELECT 1``; the relay's pool never sends it)."""
    pid: int | None = await pool.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND (query LIKE 'LISTEN%' OR query = 'SELECT 1')"
    )
    return pid


@contextlib.asynccontextmanager
async def woken_only_by_notify(dsn: str, nc: Client, stream: Stream) -> AsyncIterator[Relay]:
    """A relay running and listening, polling every 5 minutes: within a test, only a NOTIFY
    (or the look that follows a read) makes it read; stopped on exit."""
    relay = Relay(dsn, nc, stream=stream.name, poll_interval=300)
    task = asyncio.create_task(relay.run())
    try:
        await until(lambda: relay.stats().listening, "the relay listens")
        yield relay
    finally:
        relay.stop()
        await asyncio.wait_for(task, 15)


async def test_a_killed_listening_connection_is_noticed_and_opened_again(
    outbox_pool: asyncpg.Pool, dsn: str, bus: Bus, nats_client: Client, stream: Stream
) -> None:
    outbox = Outbox(bus, subject_prefix=stream.prefix)
    async with woken_only_by_notify(dsn, nats_client, stream) as relay:
        await publish(outbox_pool, outbox, 1)
        await until(lambda: relay.stats().published == 1, "woken by the NOTIFY")
        first = await listener_pid(outbox_pool)
        assert first is not None
        await outbox_pool.execute("SELECT pg_terminate_backend($1)", first)

        async def relistened() -> bool:
            return relay.stats().listening and await listener_pid(outbox_pool) not in (None, first)

        deadline = time.monotonic() + 60
        while not await relistened():
            assert time.monotonic() < deadline, "the listening connection never came back"
            await asyncio.sleep(0.05)
        await publish(outbox_pool, outbox, 2)
        await until(lambda: relay.stats().published == 2, "woken by the new connection")


async def test_rows_whose_holder_ends_between_the_read_and_the_look_are_read_at_once(
    outbox_pool: asyncpg.Pool, dsn: str, bus: Bus, nats_client: Client, stream: Stream,
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Woken by the NOTIFY, the relay reads nothing (an open transaction holds the row back
    # behind xmin); the holder ends before the relay's look, which then finds nothing held.
    # Polling every 5 minutes: only the look's count of readable rows gets the row read.
    holder = conn
    await holder.execute("BEGIN")
    await holder.fetchval("SELECT pg_current_xact_id()")  # an xid: it holds back xmin
    real_look = relay_sql.look
    ended: list[int] = []

    async def holder_ends_first(conn: asyncpg.Connection, cursor: Cursor) -> tuple[object, int]:
        held, readable = await real_look(conn, cursor)
        if held is not None and not ended:  # the row was read behind the holder
            await holder.execute("COMMIT")
            ended.append(readable)
            held, readable = await real_look(conn, cursor)
        return held, readable

    monkeypatch.setattr(relay_module, "look", holder_ends_first)
    outbox = Outbox(bus, subject_prefix=stream.prefix)
    async with woken_only_by_notify(dsn, nats_client, stream) as relay:
        await publish(outbox_pool, outbox, 1)
        await until(lambda: relay.stats().published == 1, "the row read once its holder ended")
        assert ended == [0]  # the look that found it held: nothing readable yet


@pytest.mark.parametrize("kind", [Relay, UnorderedRelay])
async def test_while_nats_is_gone_the_relay_backs_off_then_delivers_each_event_once(
    outbox_pool: asyncpg.Pool, dsn: str, bus: Bus, kind: type[Relay | UnorderedRelay], nats: Server
) -> None:
    nats.start(jetstream=True)
    nc = await connect(nats.url)
    try:
        js = nc.jetstream()
        stream = await make_stream(js)
        outbox = Outbox(bus, subject_prefix=stream.prefix)
        relay = kind(
            dsn, nc, stream=stream.name, poll_interval=0.05, ack_timeout=0.5, max_backoff=0.4
        )
        task = asyncio.create_task(relay.run())
        try:
            await publish(outbox_pool, outbox, 1)
            await until(lambda: relay.stats().published == 1, "the first event published")
            nats.kill()
            await publish(outbox_pool, outbox, 2, 3)
            await until(lambda: relay.stats().retries >= 2, "the relay backs off")
            down = time.monotonic()
            retries = relay.stats().retries
            await asyncio.sleep(2)  # NATS stays down this long: what the relay does meanwhile
            assert relay.stats().retries - retries <= 2 / 0.4 + 1  # no busy loop
            assert relay.stats().published == 1
            assert relay.stats().state in (RelayState.RELAYING, RelayState.BACKING_OFF)
            nats.start(jetstream=True)  # on the same port, with the same storage
            await until(lambda: relay.stats().published == 3, "delivered once NATS is back")
            assert time.monotonic() - down > 2
        finally:
            relay.stop()
            await asyncio.wait_for(task, 15)
        info = await js.stream_info(stream.name)
        assert info.state.messages == 3  # re-sends during the outage dropped as duplicates
    finally:
        await nc.close()


async def test_a_failed_batch_leaves_no_future_unretrieved(
    outbox_pool: asyncpg.Pool, dsn: str, bus: Bus, nats_client: Client, stream: Stream
) -> None:
    # Subjects no stream takes: every publish fails at once with NoStreamResponseError, as
    # during a leader election; the batch is sent again, and again.
    outbox = Outbox(bus, subject_prefix=f"{stream.prefix}x")
    loop = asyncio.get_running_loop()
    unretrieved: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: unretrieved.append(context["message"]))
    try:
        relay = Relay(dsn, nats_client, stream=stream.name, poll_interval=0.05, max_backoff=0.1)
        task = asyncio.create_task(relay.run())
        try:
            await publish(outbox_pool, outbox, *range(1, 21))
            await until(lambda: relay.stats().retries >= 3, "the batch fails, and again")
        finally:
            relay.stop()
            await asyncio.wait_for(task, 15)
        assert relay.stats().published == 0
        gc.collect()  # a future's exception nobody retrieved is reported when it is freed
        assert unretrieved == []
    finally:
        loop.set_exception_handler(previous)


@pytest.mark.parametrize("kind", [Relay, UnorderedRelay])
async def test_a_message_jetstream_refuses_fails_its_batch_at_once_until_it_is_stored(
    outbox_pool: asyncpg.Pool, dsn: str, bus: Bus, jetstream: JetStreamContext,
    nats_client: Client, kind: type[Relay],
) -> None:  # fmt: skip
    # A full stream that discards new messages stores two of the batch of three and refuses
    # the third: the batch fails with JetStream's answer (not after ack_timeout), nothing
    # counts as published, and once the stream has room the batch is sent again whole, the
    # two stored already dropped as duplicates.
    stream = await make_stream(jetstream, max_msgs=2, discard=DiscardPolicy.NEW)
    try:
        outbox = Outbox(bus, subject_prefix=stream.prefix)
        relay = kind(
            dsn, nats_client, stream=stream.name, poll_interval=0.05, ack_timeout=60,
            max_backoff=0.1,
        )  # fmt: skip
        task = asyncio.create_task(relay.run())
        try:
            await publish(outbox_pool, outbox, 1, 2, 3)
            await until(lambda: relay.stats().retries >= 2, "the batch is refused, and again")
            assert "maximum messages exceeded" in (relay.stats().error or "")
            assert relay.stats().published == 0
            config = (await jetstream.stream_info(stream.name)).config
            config.max_msgs = -1
            await jetstream.update_stream(config)
            await until(lambda: relay.stats().published == 3, "delivered once there is room")
        finally:
            relay.stop()
            await asyncio.wait_for(task, 15)
        assert relay.stats().duplicates == 2
        stored = [msgspec.json.decode(m.data)["order"] for m in await stream.messages()]
        assert stored == [1, 2, 3]
    finally:
        await jetstream.delete_stream(stream.name)
