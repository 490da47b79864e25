"""The application the consumer worker processes of the kill and soak tests run.

``hookbus consume _nats_consumer_app:bus`` counts each ``order_placed`` into the table named
by ``HOOKBUS_TEST_PROJECTION`` (one row per order, ``n`` the times it was applied); each hook
waits ``HOOKBUS_TEST_HOOK_DELAY`` seconds first, so that a kill lands inside a batch.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import msgspec

from hookbus import Bus, current_transaction


class OrderPlaced(msgspec.Struct, frozen=True):
    order_id: int
    amount: int


def bus() -> Bus:
    table = os.environ["HOOKBUS_TEST_PROJECTION"]
    delay = float(os.environ.get("HOOKBUS_TEST_HOOK_DELAY", "0"))
    made = Bus()
    made.declare("order_placed", OrderPlaced)
    sql = (
        f"INSERT INTO {table} VALUES ($1, 1) ON CONFLICT (order_id) DO UPDATE SET n = {table}.n + 1"
    )

    @made.hook("order_placed")
    async def count(event: Any) -> None:
        if delay:
            await asyncio.sleep(delay)
        await current_transaction().connection.execute(sql, event.order_id)  # type: ignore[attr-defined]

    return made
