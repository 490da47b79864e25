"""The application the consumer worker processes of the kill and soak tests run.

``hookbus consume _nats_consumer_app:bus`` counts each ``order_placed`` into the table named
by ``HOOKBUS_TEST_PROJECTION`` (one row per order, ``n`` the times it was applied); each hook
waits ``HOOKBUS_TEST_HOOK_DELAY`` seconds first, so that a kill lands inside a batch. With
``HOOKBUS_TEST_FAULTS`` (the soak), each batch's transaction gets a postcommit operation that
kills the process when the soak armed it (``_soak_faults``): after COMMIT, before the acks.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import msgspec
from _soak_faults import FAULTS, strike

from hookbus import Bus, Operation, current_transaction


class OrderPlaced(msgspec.Struct, frozen=True):
    order_id: int
    amount: int


class DieAfterCommit(Operation):
    """The consumer's fault point: its batch committed, none of its messages acknowledged."""

    values: set[int]

    async def postcommit(self) -> None:
        strike("consume")


def bus() -> Bus:
    table = os.environ["HOOKBUS_TEST_PROJECTION"]
    delay = float(os.environ.get("HOOKBUS_TEST_HOOK_DELAY", "0"))
    faults = bool(os.environ.get(FAULTS))
    made = Bus()
    made.declare("order_placed", OrderPlaced)
    sql = (
        f"INSERT INTO {table} VALUES ($1, 1) ON CONFLICT (order_id) DO UPDATE SET n = {table}.n + 1"
    )

    @made.hook("order_placed")
    async def count(event: Any) -> None:
        if delay:
            await asyncio.sleep(delay)
        tx: Any = current_transaction()
        await tx.connection.execute(sql, event.order_id)
        if faults:
            tx.accumulate("soak_fault", event.order_id, DieAfterCommit)

    return made
