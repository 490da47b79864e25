"""The relay when its surroundings fail: the listening connection killed, NATS gone."""

from __future__ import annotations

import asyncio
import gc
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable

import asyncpg
import hookbus_asyncpg
import msgspec
import nats
import pytest
import pytest_asyncio
from _nats import Stream, make_stream
from _outbox import OrderPlaced, install_outbox, shop_bus
from hookbus_asyncpg import Outbox
from hookbus_nats import Relay, RelayState, UnorderedRelay
from hookbus_nats.testing import server_binary
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy

from hookbus import Bus


@pytest.fixture
def bus() -> Bus:
    return shop_bus()


@pytest_asyncio.fixture
async def outbox_pool(pool: asyncpg.Pool, bus: Bus) -> asyncpg.Pool:
    await install_outbox(pool, bus)
    return pool


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
    pid: int | None = await pool.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND query LIKE 'LISTEN%'"
    )
    return pid


async def test_a_killed_listening_connection_is_noticed_and_opened_again(
    outbox_pool: asyncpg.Pool, dsn: str, bus: Bus, jetstream: JetStreamContext, stream: Stream
) -> None:
    outbox = Outbox(bus, subject_prefix=stream.prefix)
    # polling every 5 minutes: within the test, only a NOTIFY can wake the relay
    relay = Relay(dsn, jetstream, stream=stream.name, poll_interval=300)
    task = asyncio.create_task(relay.run())
    try:
        await until(lambda: relay.stats().listening, "the relay listens")
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
    finally:
        relay.stop()
        await asyncio.wait_for(task, 15)


def start_server(port: int, storage: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [server_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", storage],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def connect(url: str) -> nats.NATS:
    deadline = time.monotonic() + 20
    while True:
        try:
            return await nats.connect(
                url, max_reconnect_attempts=-1, reconnect_time_wait=0.1, connect_timeout=1
            )
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)  # a process offers nothing to await


@pytest.mark.parametrize("kind", [Relay, UnorderedRelay])
async def test_while_nats_is_gone_the_relay_backs_off_then_delivers_each_event_once(
    outbox_pool: asyncpg.Pool, dsn: str, bus: Bus, kind: type[Relay | UnorderedRelay]
) -> None:
    storage = tempfile.mkdtemp(prefix="hookbus-nats-fault-")
    with socket.socket() as probe:  # a free port, kept for the server's restart
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"nats://127.0.0.1:{port}"
    server = start_server(port, storage)
    nc = None
    try:
        nc = await connect(url)
        js = nc.jetstream()
        stream = await make_stream(js)
        outbox = Outbox(bus, subject_prefix=stream.prefix)
        relay = kind(
            dsn, js, stream=stream.name, poll_interval=0.05, ack_timeout=0.5, max_backoff=0.4
        )
        task = asyncio.create_task(relay.run())
        try:
            await publish(outbox_pool, outbox, 1)
            await until(lambda: relay.stats().published == 1, "the first event published")
            server.kill()
            server.wait()
            await publish(outbox_pool, outbox, 2, 3)
            await until(lambda: relay.stats().retries >= 2, "the relay backs off")
            down = time.monotonic()
            retries = relay.stats().retries
            await asyncio.sleep(2)  # NATS stays down this long: what the relay does meanwhile
            assert relay.stats().retries - retries <= 2 / 0.4 + 1  # no busy loop
            assert relay.stats().published == 1
            assert relay.stats().state in (RelayState.RELAYING, RelayState.BACKING_OFF)
            server = start_server(port, storage)
            await until(lambda: relay.stats().published == 3, "delivered once NATS is back")
            assert time.monotonic() - down > 2
        finally:
            relay.stop()
            await asyncio.wait_for(task, 15)
        info = await js.stream_info(stream.name)
        assert info.state.messages == 3  # re-sends during the outage dropped as duplicates
    finally:
        if nc is not None:
            await nc.close()
        server.kill()
        server.wait()
        shutil.rmtree(storage, ignore_errors=True)


async def test_a_failed_batch_leaves_no_future_unretrieved(
    outbox_pool: asyncpg.Pool, dsn: str, bus: Bus, jetstream: JetStreamContext, stream: Stream
) -> None:
    # Subjects no stream takes: every publish fails at once with NoStreamResponseError, as
    # during a leader election; the batch is sent again, and again.
    outbox = Outbox(bus, subject_prefix=f"{stream.prefix}x")
    loop = asyncio.get_running_loop()
    unretrieved: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: unretrieved.append(context["message"]))
    try:
        relay = Relay(dsn, jetstream, stream=stream.name, poll_interval=0.05, max_backoff=0.1)
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
    outbox_pool: asyncpg.Pool, dsn: str, bus: Bus, jetstream: JetStreamContext, kind: type[Relay]
) -> None:
    # A full stream that discards new messages stores two of the batch of three and refuses
    # the third: the batch fails with JetStream's answer (not after ack_timeout), nothing
    # counts as published, and once the stream has room the batch is sent again whole, the
    # two stored already dropped as duplicates.
    stream = await make_stream(jetstream, max_msgs=2, discard=DiscardPolicy.NEW)
    try:
        outbox = Outbox(bus, subject_prefix=stream.prefix)
        relay = kind(
            dsn, jetstream, stream=stream.name, poll_interval=0.05, ack_timeout=60, max_backoff=0.1
        )
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
