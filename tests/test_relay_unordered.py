"""The unordered relay on the real PostgreSQL and NATS JetStream: several relays side by side,
every committed event published and stored once, nothing held back by other transactions; a
relay killed mid-batch leaves its rows to the others; never mixed with the ordered relay."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import hookbus_asyncpg
import pytest
from _nats import Stream, make_stream
from _outbox import GATE, GATED_ROW, OrderPlaced, bus_fixture, install_outbox, outbox_pool_fixture  # noqa: F401 (fixtures)
from _postgres import holding_lock, wait_until_blocked_on_lock
from hookbus_asyncpg import Outbox
from hookbus_asyncpg._outbox._outbox_table import OUTBOX_DDL
from hookbus_nats import (
    DuplicateWindowError,
    Relay,
    RelayModeError,
    RelayState,
    UnorderedRelay,
)
from nats.aio.client import Client
from nats.js import JetStreamContext
from test_relay import (
    PROCESS,
    TRACE,
    _hookbus,
    orders_of,
    publish,
    received,
    stored,
    until,
)

from hookbus import Bus, Plugin, PluginSet, StageContext


@pytest.fixture
def outbox(bus: Bus, stream: Stream) -> Outbox:
    return Outbox(bus, subject_prefix=stream.prefix, headers=lambda: dict(TRACE))


def make_unordered(dsn: str, nc: Client, stream: Stream, **options: Any) -> UnorderedRelay:
    return UnorderedRelay(dsn, nc, stream=stream.name, poll_interval=0.05, **options)


@asynccontextmanager
async def running(*relays: UnorderedRelay | Relay) -> AsyncIterator[list[asyncio.Task[None]]]:
    """``relays`` running in tasks; stopped (each batch finished) at the end."""
    tasks = [asyncio.create_task(relay.run()) for relay in relays]
    try:
        yield tasks
    finally:
        for relay in relays:
            relay.stop()
        await asyncio.wait(tasks, timeout=15)
        for task in tasks:
            if not task.done():
                task.cancel()


async def unsent(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM hookbus_outbox WHERE sent_at IS NULL")
    return count


async def test_committed_events_are_all_delivered_whatever_their_commit_order(
    outbox_pool: asyncpg.Pool, dsn: str, jetstream: JetStreamContext, nats_client: Client,
    stream: Stream, outbox: Outbox,
) -> None:  # fmt: skip
    """The lower id commits last and a rolled-back transaction publishes nothing."""
    await outbox_pool.execute(GATED_ROW)
    started: asyncio.Queue[int] = asyncio.Queue()

    async def first() -> None:
        # its row takes the lower id in COMMIT's message; COMMIT then waits on the gate
        async with hookbus_asyncpg.transaction(outbox_pool, independent=True) as tx:
            await outbox.publish(tx, "order_placed", OrderPlaced(1), key="gated")
            started.put_nowait(await tx.connection.fetchval("SELECT pg_backend_pid()"))

    relay = make_unordered(dsn, nats_client, stream)
    async with running(relay), holding_lock(outbox_pool, GATE) as release:
        task = asyncio.create_task(first())
        await wait_until_blocked_on_lock(outbox_pool, await started.get())
        await publish(outbox_pool, outbox, stream, 2)
        assert orders_of(await received(jetstream, stream, 1)) == [2]
        with pytest.raises(RuntimeError):
            async with hookbus_asyncpg.transaction(outbox_pool) as tx:
                await outbox.publish(tx, "order_placed", OrderPlaced(3))
                raise RuntimeError("rolled back")
        await release()
        await task
        await publish(outbox_pool, outbox, stream, 4)
        messages = await received(jetstream, stream, 3)
        await until_sent(outbox_pool)
    assert sorted(orders_of(messages)) == [1, 2, 4]
    assert await stored(jetstream, stream) == 3
    assert relay.stats().duplicates == 0  # no row sent twice (a sent row claimed again)
    assert await unsent(outbox_pool) == 0
    assert relay.state is RelayState.STOPPED
    row = await outbox_pool.fetchrow("SELECT msg_id FROM hookbus_outbox ORDER BY id LIMIT 1")
    one = next(m for m in messages if orders_of([m]) == [1])
    assert one.headers["Nats-Msg-Id"] == row["msg_id"]
    assert one.headers["traceparent"] == TRACE["traceparent"]
    assert one.headers["Hookbus-Wire"] == "1"


async def test_three_relays_deliver_every_event_each_stored_once(
    outbox_pool: asyncpg.Pool, dsn: str, jetstream: JetStreamContext, nats_client: Client,
    stream: Stream, outbox: Outbox,
) -> None:  # fmt: skip
    relays = [make_unordered(dsn, nats_client, stream, batch_size=7) for _ in range(3)]
    orders = list(range(1, 301))
    async with running(*relays):
        for start in range(0, len(orders), 10):
            await publish(outbox_pool, outbox, stream, *orders[start : start + 10])
        messages = await received(jetstream, stream, len(orders))
        await until(lambda: sum(r.stats().published for r in relays) == 300, "all acked")
        await until_sent(outbox_pool)
    assert sorted(orders_of(messages)) == orders
    assert await stored(jetstream, stream) == len(orders)
    assert len({m.headers["Nats-Msg-Id"] for m in messages}) == len(orders)
    # no row was claimed by two relays: nothing was sent twice
    assert sum(r.stats().duplicates for r in relays) == 0
    assert await unsent(outbox_pool) == 0


async def test_a_session_idle_in_a_transaction_does_not_hold_the_relay_back(
    outbox_pool: asyncpg.Pool, dsn: str, jetstream: JetStreamContext, nats_client: Client,
    stream: Stream, outbox: Outbox, conn: asyncpg.Connection,
) -> None:  # fmt: skip
    await conn.execute("BEGIN")
    await conn.fetchval("SELECT pg_current_xact_id()")  # an xid: it holds back xmin
    try:
        await publish(outbox_pool, outbox, stream, 1)
        async with running(make_unordered(dsn, nats_client, stream)):
            assert orders_of(await received(jetstream, stream, 1)) == [1]
    finally:
        await conn.execute("ROLLBACK")


def _start_process(dsn: str, url: str, stream: Stream, point: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(PROCESS), dsn, url, stream.name, point, "unordered"],
        stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": "adapters"},
    )  # fmt: skip


async def _wait_for(process: subprocess.Popen[str], word: str) -> None:
    assert process.stdout is not None
    lines: list[str] = []
    while word not in lines:
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 20)
        assert line, f"the relay process ended before {word!r}: {lines}"
        lines.append(line.strip())


@pytest.mark.parametrize("point", ["read", "acked"])
async def test_a_relay_killed_before_its_commit_leaves_its_rows_to_another(
    outbox_pool: asyncpg.Pool, dsn: str, jetstream: JetStreamContext, nats_client: Client,
    stream: Stream, outbox: Outbox, nats_url: str, point: str,
) -> None:  # fmt: skip
    """While the process holds its batch (locked, unsent), another relay publishes the rows
    committed since, skipping the locked ones; once it is killed, the other relay sends its
    rows: ``acked``, they were published already, and JetStream drops them as duplicates."""
    await publish(outbox_pool, outbox, stream, 1, 2, 3)
    process = _start_process(dsn, nats_url, stream, point)
    relay = make_unordered(dsn, nats_client, stream)
    try:
        await _wait_for(process, point)
        async with running(relay):
            await publish(outbox_pool, outbox, stream, 4, 5)
            await until(lambda: relay.stats().published == 2, "the rows not held are sent")
            await until_sent(outbox_pool, 3)  # the process's, still locked
            assert await stored(jetstream, stream) == (5 if point == "acked" else 2)
            process.kill()
            process.wait(10)
            await until(lambda: relay.stats().published == 5, "the killed batch is re-sent")
            await until_sent(outbox_pool)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert relay.stats().duplicates == (3 if point == "acked" else 0)
    assert sorted(orders_of(await received(jetstream, stream, 5))) == [1, 2, 3, 4, 5]
    assert await stored(jetstream, stream) == 5
    assert await unsent(outbox_pool) == 0


async def test_ordered_and_unordered_relays_never_mix(
    outbox_pool: asyncpg.Pool, dsn: str, jetstream: JetStreamContext, nats_client: Client,
    stream: Stream, outbox: Outbox,
) -> None:  # fmt: skip
    await publish(outbox_pool, outbox, stream, 1)
    unordered = make_unordered(dsn, nats_client, stream)
    async with running(unordered):
        assert orders_of(await received(jetstream, stream, 1)) == [1]
        ordered = Relay(dsn, nats_client, stream=stream.name, poll_interval=0.05)
        with pytest.raises(RelayModeError, match=r"relayed unordered.*--unordered.*mode ordered"):
            await asyncio.wait_for(ordered.run(), 30)  # (a relay that ran: a timeout)
        assert ordered.state is RelayState.FAILED
        busy = await asyncio.to_thread(_hookbus, dsn, "outbox", "mode", "ordered", "--yes")
        assert busy.returncode == 5 and "an unordered relay is running" in busy.stderr
    shown = _hookbus(dsn, "outbox", "mode", "ordered")  # without --yes: says what it does
    assert shown.returncode == 0 and "--yes" in shown.stdout
    switched = _hookbus(dsn, "outbox", "mode", "ordered", "--yes")
    assert switched.returncode == 0, switched.stderr
    assert "1 row(s) deleted as sent" in switched.stdout
    await publish(outbox_pool, outbox, stream, 2)
    ordered = Relay(dsn, nats_client, stream=stream.name, poll_interval=0.05)
    async with running(ordered):
        await until(lambda: ordered.stats().published == 1, "only the unsent row is sent")
        busy = await asyncio.to_thread(_hookbus, dsn, "outbox", "mode", "unordered", "--yes")
        assert busy.returncode == 5 and "an ordered relay is running" in busy.stderr
    assert sorted(orders_of(await received(jetstream, stream, 2))) == [1, 2]
    with pytest.raises(RelayModeError, match=r"relayed ordered.*without --unordered"):
        await asyncio.wait_for(make_unordered(dsn, nats_client, stream).run(), 30)
    refused = _hookbus(dsn, "outbox", "relay", "--unordered", "--stream", stream.name)
    assert refused.returncode == 4
    assert "relayed ordered" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    switched = _hookbus(dsn, "outbox", "mode", "unordered", "--yes")
    assert "1 row(s) marked sent" in switched.stdout, switched.stderr  # the first went
    await publish(outbox_pool, outbox, stream, 3)
    again = make_unordered(dsn, nats_client, stream)
    async with running(again):
        await until(lambda: again.stats().published == 1, "only the new row is sent")
    assert await stored(jetstream, stream) == 3


def _start_command(dsn: str, url: str, stream: Stream) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hookbus", "outbox", "relay", "--unordered", "--stream",
         stream.name, "--poll-interval", "0.05", "--stats-interval", "0.2"],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=os.environ | {"HOOKBUS_DSN": dsn, "NATS_URL": url},
    )  # fmt: skip


async def test_the_command_stops_on_sigterm_and_status_and_cleanup_see_sent_rows(
    outbox_pool: asyncpg.Pool, dsn: str, jetstream: JetStreamContext, stream: Stream,
    outbox: Outbox, nats_url: str,
) -> None:  # fmt: skip
    await publish(outbox_pool, outbox, stream, 1, 2, 3)
    process = _start_command(dsn, nats_url, stream)
    try:
        await received(jetstream, stream, 3)
        await until_sent(outbox_pool)
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(process.communicate, timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "(unordered) stopped: published 3 (0 duplicates)" in err
    async with hookbus_asyncpg.transaction(outbox_pool) as tx:  # one left unsent
        await outbox.publish(tx, "order_placed", OrderPlaced(4))
    shown = json.loads(_hookbus(dsn, "outbox", "status", "--json").stdout)
    assert shown["mode"] == "unordered" and shown["published"] == 3 and shown["pending"] == 1
    assert shown["oldest_pending"] is not None
    text = _hookbus(dsn, "outbox", "status").stdout
    assert "mode            unordered" in text and "pending         1" in text
    cleaned = _hookbus(dsn, "outbox", "cleanup", "--retention", "0.001")
    assert "deleted 3 published row(s)" in cleaned.stdout, cleaned.stderr
    assert await outbox_pool.fetchval("SELECT count(*) FROM hookbus_outbox") == 1


async def until_sent(pool: asyncpg.Pool, left: int = 0) -> None:
    """Wait (60 s at most) until ``left`` rows are not marked sent (a relay's counters move
    at the acknowledgements, before its COMMIT)."""
    for _ in range(3000):
        if await unsent(pool) == left:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {left} row(s) left unsent")


async def test_a_stream_forgetting_ids_too_soon_is_refused(
    outbox_pool: asyncpg.Pool, dsn: str, jetstream: JetStreamContext, nats_client: Client
) -> None:
    short = await make_stream(jetstream, duplicate_window=5.0)
    try:
        relay = UnorderedRelay(dsn, nats_client, stream=short.name, retry_horizon=60.0)
        with pytest.raises(DuplicateWindowError, match="5 s, less than"):
            await relay.run()
        assert relay.state is RelayState.FAILED
    finally:
        await jetstream.delete_stream(short.name)


def test_bad_options_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        UnorderedRelay("postgresql://", None, stream="S", batch_size=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="poll_interval"):
        UnorderedRelay("postgresql://", None, stream="S", poll_interval=0)  # type: ignore[arg-type]


async def _create_1_0(ctx: StageContext) -> None:
    await ctx.tx.connection.execute(OUTBOX_DDL)


@pytest.mark.parametrize("ran", ["ordered", "nothing"])
async def test_an_outbox_made_at_1_0_is_upgraded_by_the_migration(
    pool: asyncpg.Pool, dsn: str, bus: Bus, jetstream: JetStreamContext, nats_client: Client,
    stream: Stream, ran: str,
) -> None:  # fmt: skip
    """The outbox as version 1.0 made it (before the unordered mode), upgraded as ``hookbus
    migrate`` does: an outbox whose ordered relay has run is recorded as ordered."""
    await install_outbox(pool, bus)  # (drops what was there, then the 1.0 layout below)
    await pool.execute(
        "DROP TABLE hookbus_outbox, hookbus_outbox_cursor, hookbus_outbox_mode, hookbus_plugin, "
        "hookbus_stage, hookbus_batch CASCADE"
    )
    old = Plugin("hookbus_outbox", "1.0", pre_init=_create_1_0)
    assert await hookbus_asyncpg.PluginManager(pool, PluginSet(bus, [old])).install()
    outbox = Outbox(bus, subject_prefix=stream.prefix)
    await publish(pool, outbox, stream, 1)
    if ran == "ordered":
        await pool.execute("INSERT INTO hookbus_outbox_cursor (relay) VALUES ('default')")
    with pytest.raises(RelayModeError, match="hookbus migrate"):
        await asyncio.wait_for(make_unordered(dsn, nats_client, stream).run(), 30)
    manager = hookbus_asyncpg.PluginManager(pool, PluginSet(bus, [hookbus_asyncpg.outbox_plugin()]))
    assert await manager.upgrade() == ["hookbus_outbox"]
    assert await unsent(pool) == 1
    assert await pool.fetchval("SELECT to_regclass('hookbus_outbox_unsent')") is not None
    mode = await pool.fetchval("SELECT mode FROM hookbus_outbox_mode")
    assert mode == ("ordered" if ran == "ordered" else None)
    relay = make_unordered(dsn, nats_client, stream)
    if ran == "ordered":
        with pytest.raises(RelayModeError, match="relayed ordered"):
            await asyncio.wait_for(relay.run(), 30)
        return
    async with running(relay):
        assert orders_of(await received(jetstream, stream, 1)) == [1]
    assert await pool.fetchval("SELECT mode FROM hookbus_outbox_mode") == "unordered"


async def test_uninstall_is_refused_while_a_row_is_unsent(
    outbox_pool: asyncpg.Pool, dsn: str, bus: Bus, nats_client: Client,
    stream: Stream, outbox: Outbox,
) -> None:  # fmt: skip
    manager = hookbus_asyncpg.PluginManager(
        outbox_pool, PluginSet(bus, [hookbus_asyncpg.outbox_plugin()])
    )
    await publish(outbox_pool, outbox, stream, 1)
    with pytest.raises(Exception, match="1 unpublished event"):
        await manager.uninstall("hookbus_outbox")
    relay = make_unordered(dsn, nats_client, stream)
    async with running(relay):
        await until(lambda: relay.stats().published == 1, "sent")
    await until_sent(outbox_pool)
    await manager.uninstall("hookbus_outbox")
    assert await outbox_pool.fetchval("SELECT to_regclass('hookbus_outbox_mode')") is None
