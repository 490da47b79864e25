"""The relay on the real PostgreSQL and NATS JetStream: what is committed is published, once,
in commit order; what holds it back is reported; it refuses to run where it would lose or
duplicate.

The module's relays run on a database of its own (conftest's ``dsn``, made for the module),
and a relay waits only for the open transactions of its own database (test_relay_gate): a
session idle in a transaction of another suite sharing the server holds none of them back.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import hookbus_asyncpg
import msgspec
import pytest
from _nats import Stream, make_stream
from _outbox import GATE, GATED_ROW, OrderPlaced, bus_fixture, outbox_pool_fixture  # noqa: F401 (fixtures)
from _postgres import holding_lock, wait_until_blocked_on_lock
from hookbus_asyncpg import LockLostError, Outbox
from hookbus_nats import (
    CursorAheadError,
    DuplicateWindowError,
    Relay,
    RelayState,
    RelayStateError,
    UnorderedRelay,
)
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

from hookbus import Bus

PROCESS = Path(__file__).with_name("_relay_process.py")


def make_relay(dsn: str, nc: Client, stream: Stream, **options: Any) -> Relay:
    return Relay(dsn, nc, stream=stream.name, poll_interval=0.05, **options)


@asynccontextmanager
async def running(relay: Relay | UnorderedRelay) -> AsyncIterator[asyncio.Task[None]]:
    """``relay`` running in a task; stopped (its batch finished) at the end."""
    task = asyncio.create_task(relay.run())
    try:
        yield task
    finally:
        relay.stop()
        await asyncio.wait({task}, timeout=15)
        if not task.done():
            task.cancel()


async def publish(pool: asyncpg.Pool, outbox: Outbox, stream: Stream, *orders: int) -> None:
    """One committed transaction publishing ``orders`` on the stream's subjects."""
    async with hookbus_asyncpg.transaction(pool) as tx:
        for order in orders:
            await outbox.publish(tx, "order_placed", OrderPlaced(order), key=f"o{order}")


async def received(js: JetStreamContext, stream: Stream, count: int) -> list[Any]:
    """The first ``count`` messages of the stream, waited for (60 s at most: a slow machine,
    or a prepared transaction on the server, which the relay waits for whatever its database)."""
    sub = await js.pull_subscribe(f"{stream.prefix}.>", stream=stream.name)
    got: list[Any] = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < count and time.monotonic() < deadline:
            try:
                got += await sub.fetch(count - len(got), timeout=1)
            except (TimeoutError, NatsTimeoutError):
                continue
    finally:
        await sub.unsubscribe()
    assert len(got) == count, f"{len(got)} of {count} messages arrived"
    return got


def orders_of(messages: list[Any]) -> list[int]:
    return [msgspec.json.decode(m.data, type=OrderPlaced).order for m in messages]


async def stored(js: JetStreamContext, stream: Stream) -> int:
    return (await js.stream_info(stream.name)).state.messages


async def until(check: Callable[[], bool], what: str) -> None:
    """Wait (60 s at most) for ``check()``: the relay's counters offer nothing to await."""
    deadline = time.monotonic() + 60
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def outbox(bus: Bus, stream: Stream) -> Outbox:
    return Outbox(bus, subject_prefix=stream.prefix, headers=lambda: dict(TRACE))


TRACE = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


async def test_committed_events_are_published_and_rolled_back_ones_never(
    outbox_pool: asyncpg.Pool, dsn: str, jetstream: JetStreamContext, nats_client: Client,
    stream: Stream, outbox: Outbox,
) -> None:  # fmt: skip
    await publish(outbox_pool, outbox, stream, 1)
    with pytest.raises(RuntimeError):
        async with hookbus_asyncpg.transaction(outbox_pool) as tx:
            await outbox.publish(tx, "order_placed", OrderPlaced(2))
            raise RuntimeError("rolled back")
    await publish(outbox_pool, outbox, stream, 3, 4)
    relay = make_relay(dsn, nats_client, stream)
    async with running(relay):
        messages = await received(jetstream, stream, 3)
    assert relay.state is RelayState.STOPPED
    assert orders_of(messages) == [1, 3, 4]
    assert await stored(jetstream, stream) == 3
    first = messages[0]
    row = await outbox_pool.fetchrow("SELECT msg_id, subject FROM hookbus_outbox ORDER BY id")
    assert first.headers["Nats-Msg-Id"] == row["msg_id"]
    assert first.headers["Hookbus-Event"] == "order_placed"
    assert first.headers["Hookbus-Wire"] == "1"
    assert first.headers["traceparent"] == TRACE["traceparent"]
    assert first.subject == row["subject"] == f"{stream.prefix}.order_placed"
    assert relay.stats().published == 3


async def test_transactions_committed_out_of_id_order_are_all_delivered(
    outbox_pool: asyncpg.Pool, dsn: str, jetstream: JetStreamContext, nats_client: Client,
    stream: Stream, outbox: Outbox,
) -> None:  # fmt: skip
    """The case an ``id`` cursor loses even behind the xmin gate: the transaction with the
    lower xid writes the higher id and commits first, so its row is published while the
    lower id is still invisible; an ``id`` cursor has passed that id when it commits."""
    await outbox_pool.execute(GATED_ROW)
    xids: asyncio.Queue[None] = asyncio.Queue()
    second_may_end = asyncio.Event()
    blocked: asyncio.Queue[int] = asyncio.Queue()

    async def second() -> None:
        # the higher xid; its row takes the lower id in COMMIT's message, then COMMIT waits
        async with hookbus_asyncpg.transaction(outbox_pool, independent=True) as tx:
            await xids.get()
            await tx.connection.fetchval("SELECT pg_current_xact_id()")
            await outbox.publish(tx, "order_placed", OrderPlaced(2), key="gated")
            blocked.put_nowait(await tx.connection.fetchval("SELECT pg_backend_pid()"))
            await second_may_end.wait()

    relay = make_relay(dsn, nats_client, stream)
    async with running(relay), holding_lock(outbox_pool, GATE) as release:
        task = asyncio.create_task(second())
        try:
            async with hookbus_asyncpg.transaction(outbox_pool, independent=True) as tx1:
                await tx1.connection.fetchval("SELECT pg_current_xact_id()")  # the lower xid
                xids.put_nowait(None)
                pid = await blocked.get()
                second_may_end.set()
                await wait_until_blocked_on_lock(outbox_pool, pid)  # its row has the lower id
                await outbox.publish(tx1, "order_placed", OrderPlaced(1))  # the higher id
            assert orders_of(await received(jetstream, stream, 1)) == [1]
            await until(lambda: relay.stats().published == 1, "the first row's batch is done")
            await release()
            await task
        finally:
            if not task.done():  # a failure above: end the held scope, or the pool waits
                await release()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await publish(outbox_pool, outbox, stream, 3)
        messages = await received(jetstream, stream, 3)
    assert orders_of(messages) == [1, 2, 3]
    assert await stored(jetstream, stream) == 3


async def test_rows_are_read_in_numeric_xid_order_across_a_power_of_ten(
    outbox_pool: asyncpg.Pool, dsn: str, jetstream: JetStreamContext, nats_client: Client,
    stream: Stream, outbox: Outbox,
) -> None:  # fmt: skip
    """xids travel as text, but the batch is ordered by the xid itself: as text, '10' sorts
    before '9', so a batch would take the rows of xid 10 first, move the cursor past them,
    and never read those of 9 (as after ``hookbus outbox reset``: the old rows at xid 3,
    new ones at xids such as 241863). Numbered by hand, below any server's xmin."""
    await publish(outbox_pool, outbox, stream, 1, 2, 3)
    await outbox_pool.execute(
        "UPDATE hookbus_outbox SET xid = (CASE WHEN id = (SELECT min(id) FROM hookbus_outbox) "
        "THEN '9' ELSE '10' END)::xid8"
    )
    relay = make_relay(dsn, nats_client, stream, batch_size=2)
    async with running(relay):
        await until(lambda: relay.stats().batches == 2, "two batches relayed")
        messages = await received(jetstream, stream, 3)
    assert orders_of(messages) == [1, 2, 3]


async def test_a_session_idle_in_a_transaction_is_reported_as_what_holds_the_relay(
    outbox_pool: asyncpg.Pool, dsn: str, jetstream: JetStreamContext, nats_client: Client,
    stream: Stream, outbox: Outbox, conn: asyncpg.Connection,
) -> None:  # fmt: skip
    idle = conn
    await idle.execute("SET application_name = 'idle-report'")
    await idle.execute("BEGIN")
    await idle.fetchval("SELECT pg_current_xact_id()")  # an xid: it holds back xmin
    await publish(outbox_pool, outbox, stream, 1)
    relay = make_relay(dsn, nats_client, stream)
    async with running(relay):
        pid = idle.get_server_pid()

        def reported() -> bool:  # once the relay has looked since the session began
            held = relay.stats().held_back
            return held is not None and held.pid == pid

        await until(reported, "the idle session reported")
        held = relay.stats().held_back
        assert held is not None
        assert held.rows == 1 and held.state == "idle in transaction"
        assert held.application_name == "idle-report"
        assert f"pid {pid} (idle in transaction, idle-report)" in held.describe()
        assert await stored(jetstream, stream) == 0
        await idle.execute("COMMIT")
        assert orders_of(await received(jetstream, stream, 1)) == [1]
        await until(lambda: relay.stats().held_back is None, "no longer held back")


async def test_a_relay_that_loses_its_lock_stops_before_publishing(
    outbox_pool: asyncpg.Pool, dsn: str, jetstream: JetStreamContext, nats_client: Client,
    stream: Stream, outbox: Outbox,
) -> None:  # fmt: skip
    relay = make_relay(dsn, nats_client, stream)
    async with running(relay) as task:
        await until(lambda: relay.state is RelayState.WAITING, "the relay waits for rows")
        holder = await outbox_pool.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        assert holder is not None
        # waited for until the backend has exited (its socket closed): the relay's loop,
        # shared with this test, sees the lock's connection end before the row's NOTIFY
        assert await outbox_pool.fetchval("SELECT pg_terminate_backend($1, 5000)", holder)
        await publish(outbox_pool, outbox, stream, 1)
        with pytest.raises(LockLostError):
            await asyncio.wait_for(task, 10)
    assert relay.state is RelayState.FAILED
    assert await stored(jetstream, stream) == 0
    # a standby (here: the next relay of the same name) takes over and publishes it
    async with running(make_relay(dsn, nats_client, stream)):
        assert orders_of(await received(jetstream, stream, 1)) == [1]


async def test_a_standby_takes_over_when_the_active_relay_stops(
    outbox_pool: asyncpg.Pool, dsn: str, jetstream: JetStreamContext, nats_client: Client,
    stream: Stream, outbox: Outbox,
) -> None:  # fmt: skip
    active = make_relay(dsn, nats_client, stream)
    standby = make_relay(dsn, nats_client, stream, standby_check=0.2)
    async with running(active):
        await until(lambda: active.state is RelayState.WAITING, "the first relay is active")
        async with running(standby):
            await publish(outbox_pool, outbox, stream, 1)
            assert orders_of(await received(jetstream, stream, 1)) == [1]
            assert standby.state is RelayState.STARTING  # waiting for the lock
            active.stop()
            await until(lambda: active.state is RelayState.STOPPED, "the first relay stopped")
            await publish(outbox_pool, outbox, stream, 2)
            assert orders_of(await received(jetstream, stream, 2)) == [1, 2]
            # JetStream stores the message before the relay has its acknowledgement and counts
            # it: wait for the count, do not read it at once.
            await until(lambda: standby.stats().published == 1, "the standby published it")
    assert await stored(jetstream, stream) == 2


async def test_a_stream_forgetting_ids_too_soon_is_refused(
    outbox_pool: asyncpg.Pool,
    dsn: str,
    jetstream: JetStreamContext,
    nats_client: Client,
    outbox: Outbox,
) -> None:
    short = await make_stream(jetstream, duplicate_window=5.0)
    try:
        relay = Relay(dsn, nats_client, stream=short.name, retry_horizon=60.0)
        with pytest.raises(DuplicateWindowError, match="5 s, less than"):
            await relay.run()
        assert relay.state is RelayState.FAILED
    finally:
        await jetstream.delete_stream(short.name)


async def test_a_cursor_ahead_of_the_server_is_refused_until_reset(
    outbox_pool: asyncpg.Pool, dsn: str, jetstream: JetStreamContext, nats_client: Client,
    stream: Stream, outbox: Outbox,
) -> None:  # fmt: skip
    await publish(outbox_pool, outbox, stream, 1)
    # as after a restore from a dump: the cursor is past every xid this server will give
    await outbox_pool.execute(
        "INSERT INTO hookbus_outbox_cursor (relay, xid) VALUES ('default', "
        "(pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000000)::text::xid8)"
    )
    relay = make_relay(dsn, nats_client, stream)
    with pytest.raises(CursorAheadError, match="hookbus outbox reset"):
        await relay.run()
    result = _hookbus(dsn, "outbox", "reset", "--yes")
    assert result.returncode == 0, result.stderr
    async with running(make_relay(dsn, nats_client, stream)):
        assert orders_of(await received(jetstream, stream, 1)) == [1]


def _hookbus(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"HOOKBUS_DSN": dsn}
    return subprocess.run(
        [sys.executable, "-m", "hookbus", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def _start_process(dsn: str, url: str, stream: Stream, point: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(PROCESS), dsn, url, stream.name, point],
        stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": "adapters"},
    )  # fmt: skip


async def _killed_at(process: subprocess.Popen[str], word: str) -> None:
    """Wait for the process to print ``word`` (20 s at most), then SIGKILL it by pid."""
    assert process.stdout is not None
    lines: list[str] = []
    try:
        while word not in lines:
            line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 20)
            assert line, f"the relay process ended before {word!r}: {lines}"
            lines.append(line.strip())
    finally:
        process.kill()
        process.wait(10)


@pytest.mark.parametrize("point", ["read", "acked"])
async def test_a_relay_killed_mid_batch_is_replaced_and_each_event_stored_once(
    outbox_pool: asyncpg.Pool, dsn: str, jetstream: JetStreamContext, nats_client: Client,
    stream: Stream, outbox: Outbox, nats_url: str, point: str,
) -> None:  # fmt: skip
    """``read``: killed after COMMIT, before publishing: the next relay publishes. ``acked``:
    killed after JetStream acknowledged the batch, before the cursor was saved: the next
    relay sends it again and JetStream drops each message as a duplicate."""
    await publish(outbox_pool, outbox, stream, 1, 2, 3)
    await _killed_at(_start_process(dsn, nats_url, stream, point), point)
    assert await stored(jetstream, stream) == (3 if point == "acked" else 0)
    cursor = await outbox_pool.fetchval("SELECT id FROM hookbus_outbox_cursor")
    assert cursor == 0  # the killed relay never saved it
    relay = make_relay(dsn, nats_client, stream)
    async with running(relay):
        await until(lambda: relay.stats().published == 3, "the batch is sent again")
    assert relay.stats().duplicates == (3 if point == "acked" else 0)
    assert orders_of(await received(jetstream, stream, 3)) == [1, 2, 3]
    assert await stored(jetstream, stream) == 3


async def test_a_relay_runs_once(
    outbox_pool: asyncpg.Pool, dsn: str, nats_client: Client, stream: Stream
) -> None:
    relay = make_relay(dsn, nats_client, stream)
    async with running(relay):
        await until(lambda: relay.state is RelayState.WAITING, "the relay waits for rows")
    assert relay.state is RelayState.STOPPED
    with pytest.raises(RelayStateError, match="from stopped to starting"):
        await relay.run()


@pytest.mark.parametrize("kind", [Relay, UnorderedRelay])
async def test_a_relay_given_a_jetstream_context_still_relays_but_says_it_is_deprecated(
    outbox_pool: asyncpg.Pool, dsn: str, jetstream: JetStreamContext, stream: Stream,
    outbox: Outbox, kind: type[Relay | UnorderedRelay],
) -> None:  # fmt: skip
    """The form of earlier releases, ``Relay(dsn, js, ...)``, works for one more release; the
    warning names what to write instead, at the line that built the relay."""
    name = kind.__name__
    with pytest.warns(DeprecationWarning, match=rf"{name}\(dsn, nc, \.\.\.\)") as warned:
        relay = kind(dsn, jetstream, stream=stream.name, poll_interval=0.05)
    assert [w.filename for w in warned] == [__file__]
    await publish(outbox_pool, outbox, stream, 1, 2)
    async with running(relay):
        assert orders_of(await received(jetstream, stream, 2)) == [1, 2]


@pytest.mark.parametrize("kind", [Relay, UnorderedRelay])
@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("nats://127.0.0.1:4222", r"second argument is a nats\.aio\.client\.Client .*not str"),
        (None, r"needs the NATS connection: \w+\(dsn, nc, \.\.\.\)"),
    ],
)
def test_a_relay_without_a_nats_connection_is_refused_at_construction(
    kind: type[Relay | UnorderedRelay], given: Any, said: str
) -> None:
    with pytest.raises(TypeError, match=said):
        kind("postgresql://", given, stream="S")
