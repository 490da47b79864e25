"""The ordered relay's gate on the real PostgreSQL: it reads rows in ``(xid, id)`` order
whatever the xids' number of digits."""

from __future__ import annotations

import asyncpg
import pytest
import pytest_asyncio
from _nats import Stream
from _outbox import install_outbox, shop_bus
from hookbus_asyncpg import Outbox
from nats.js import JetStreamContext
from test_relay import make_relay, orders_of, publish, received, running, stored, until

from hookbus import Bus


@pytest.fixture
def bus() -> Bus:
    return shop_bus()


@pytest_asyncio.fixture
async def outbox_pool(pool: asyncpg.Pool, bus: Bus) -> asyncpg.Pool:
    await install_outbox(pool, bus)
    return pool


@pytest.fixture
def outbox(bus: Bus, stream: Stream) -> Outbox:
    return Outbox(bus, subject_prefix=stream.prefix)


async def test_rows_are_read_in_xid_order_across_a_power_of_ten(
    outbox_pool: asyncpg.Pool, dsn: str, jetstream: JetStreamContext, stream: Stream,
    outbox: Outbox,
) -> None:  # fmt: skip
    """xids 98, 99, 100, 101, two rows a batch: ordered as text, the first batch would be
    100 and 101, and the cursor would pass 98 and 99 before they are sent."""
    for order in (1, 2, 3, 4):
        await publish(outbox_pool, outbox, stream, order)
    await outbox_pool.execute(
        "UPDATE hookbus_outbox SET xid = (98 + id - (SELECT min(id) FROM hookbus_outbox))"
        "::text::xid8"
    )
    relay = make_relay(dsn, jetstream, stream, batch_size=2)
    async with running(relay):
        await until(lambda: relay.stats().published == 4, "every row is published")
    assert orders_of(await received(jetstream, stream, 4)) == [1, 2, 3, 4]
    assert await stored(jetstream, stream) == 4
