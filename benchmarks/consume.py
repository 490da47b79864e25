"""Consumer benchmark: JetStream messages applied to PostgreSQL through hooks, once each.

Each message (256 bytes of JSON) runs one hook that writes one projection row, with its inbox
row, and is acknowledged after COMMIT. Cases, interleaved round by round (the order flipped
every round), each on its own durable consumer of one file-storage stream:

* ``batch``: ``hookbus_nats.Consumer.run()``, one transaction per 500-message fetch (the
  next fetch in flight meanwhile), the hook sending its INSERT;
* ``batch, accumulated``: the same, the hook accumulating its row into one operation that
  writes the batch's rows in one statement at precommit (``tx.accumulate``);
* ``per message``: the same fetches, one transaction per message (inbox row, hook, COMMIT,
  ack), the way a consumer without batching works.

Messages are published before each timed drain (not timed). The figures are messages per
second, median over the rounds, and the ratio of each case to ``per message``. NATS:
``HOOKBUS_NATS_URL``, else 127.0.0.1:4222. PostgreSQL: a database of its own on ``--dsn``,
else ``HOOKBUS_DSN``, else the local server, else an embedded one.

    python benchmarks/consume.py [--dsn DSN] [--rounds 5] [--messages 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import hookbus_asyncpg
import msgspec
import nats
from hookbus_asyncpg.testing import run_with_database
from hookbus_nats import Consumer, create_inbox, record_applied

import hookbus
from hookbus import current_transaction

BATCH = 500


class Placed(msgspec.Struct, frozen=True):
    order_id: int
    amount: int
    note: str


class WriteRows(hookbus.Operation):
    """One INSERT of every row the batch's hooks accumulated."""

    values: set[tuple[str, int]]

    async def precommit(self) -> None:
        tx: Any = current_transaction()
        orders, amounts = zip(*self.values, strict=True)
        await tx.connection.execute(
            "INSERT INTO bench_projection SELECT * FROM unnest($1::text[], $2::int[])",
            list(orders),
            list(amounts),
        )


def make_bus(accumulate: bool) -> hookbus.Bus:
    bus = hookbus.Bus()
    bus.declare("placed", Placed)
    if accumulate:

        @bus.hook("placed")
        def gather(event: Placed) -> None:
            current_transaction().accumulate("rows", (str(event.order_id), event.amount), WriteRows)
    else:

        @bus.hook("placed")
        async def write(event: Placed) -> None:
            tx: Any = current_transaction()
            await tx.connection.execute(
                "INSERT INTO bench_projection VALUES ($1, $2)", str(event.order_id), event.amount
            )

    return bus


async def publish(js: Any, subject: str, count: int) -> None:
    note = "x" * 200  # about 256 bytes of JSON a message
    encode = msgspec.json.Encoder().encode
    for start in range(0, count, 1000):
        await asyncio.gather(
            *(
                js.publish(
                    subject,
                    encode(Placed(i, i % 100, note)),
                    headers={
                        "Nats-Msg-Id": secrets.token_hex(8),
                        "Hookbus-Event": "placed",
                        "Hookbus-Wire": "1",
                    },
                )
                for i in range(start, min(start + 1000, count))
            )
        )


def with_consumer(bus: hookbus.Bus, pool: asyncpg.Pool, nc: Any, stream: str, name: str) -> Any:
    """``Consumer.run()`` (the next fetch in flight while a batch is applied), until ``count``
    messages are applied; a consumer started (bound) before the clock starts."""

    async def prepare() -> Callable[[int], Awaitable[float]]:
        consumer = Consumer(
            bus, pool, nc, name=name, stream=stream, subject=f"{stream}.{name}", batch=BATCH
        )
        await consumer.start()

        async def drain(count: int) -> float:
            running = asyncio.create_task(consumer.run())
            while consumer.statistics().applied < count:  # noqa: ASYNC110 (counters, no event)
                await asyncio.sleep(0.001)
            done = time.perf_counter()  # not counting the stop (a last empty fetch)
            consumer.stop()
            await running
            return done

        return drain

    return prepare


async def per_message(bus: hookbus.Bus, pool: asyncpg.Pool, js: Any, stream: str, name: str) -> Any:
    """A hand-written consumer: the same fetches, one transaction per message."""
    from nats.js import api

    await js.add_consumer(
        stream,
        api.ConsumerConfig(durable_name=name, ack_policy=api.AckPolicy.EXPLICIT,
                           filter_subject=f"{stream}.{name}", ack_wait=60),
    )  # fmt: skip
    sub = await js.pull_subscribe_bind(durable=name, stream=stream)
    decode = msgspec.json.Decoder(Placed).decode

    async def prepare() -> Callable[[int], Awaitable[float]]:
        return drain

    async def drain(count: int) -> float:
        done = 0
        while done < count:
            for msg in await sub.fetch(BATCH, timeout=5):
                async with hookbus_asyncpg.transaction(pool) as tx:
                    if await record_applied(tx.connection, name, [msg.headers["Nats-Msg-Id"]]):
                        await bus.emit("placed", decode(msg.data))
                await msg.ack()
                done += 1
        return time.perf_counter()

    return prepare


async def measure(dsn: str, args: argparse.Namespace) -> None:
    nc = await nats.connect(os.environ.get("HOOKBUS_NATS_URL", "nats://127.0.0.1:4222"))
    js = nc.jetstream()
    stream = f"BENCH_{secrets.token_hex(4)}"
    await js.add_stream(name=stream, subjects=[f"{stream}.>"])
    try:
        async with asyncpg.create_pool(dsn, min_size=2, max_size=4) as pool:
            await create_inbox(pool)
            await pool.execute("CREATE TABLE bench_projection (order_id text, amount int)")
            plain, accumulated = make_bus(False), make_bus(True)
            Prepare = Callable[[], Awaitable[Callable[[int], Awaitable[float]]]]
            cases: dict[str, tuple[int, Prepare]] = {
                "batch": (args.messages, with_consumer(plain, pool, nc, stream, "batch")),
                "batch, accumulated": (
                    args.messages,
                    with_consumer(accumulated, pool, nc, stream, "accumulated"),
                ),
                "per message": (
                    max(500, args.messages // 10),
                    await per_message(plain, pool, js, stream, "single"),
                ),
            }
            subjects = {"batch": "batch", "batch, accumulated": "accumulated",
                        "per message": "single"}  # fmt: skip
            rates: dict[str, list[float]] = {name: [] for name in cases}
            for round_ in range(args.rounds + 1):  # round 0 warms up, not counted
                order = list(cases) if round_ % 2 == 0 else list(reversed(cases))
                for name in order:
                    count, prepare = cases[name]
                    drain = await prepare()
                    await publish(js, f"{stream}.{subjects[name]}", count)
                    await pool.execute("TRUNCATE bench_projection, hookbus_inbox")
                    started = time.perf_counter()
                    elapsed = await drain(count) - started
                    if round_:
                        rates[name].append(count / elapsed)
            base = statistics.median(rates["per message"])
            print(f"{'case':<20} {'messages/s (median)':>20} {'x per message':>14}")
            for name, values in rates.items():
                rate = statistics.median(values)
                print(f"{name:<20} {rate:>20,.0f} {rate / base:>14.1f}")
            print(f"({args.rounds} rounds, {args.messages:,} messages a batch case, "
                  f"{BATCH} a fetch; measured under shared load)")  # fmt: skip
    finally:
        await js.delete_stream(stream)
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    run_with_database(lambda dsn: measure(dsn, args), "bench_consume", dsn=args.dsn)


if __name__ == "__main__":
    main()
