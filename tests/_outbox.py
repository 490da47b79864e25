"""The outbox on a test database: its tables installed as ``hookbus install`` does, and an
application event to publish."""

from __future__ import annotations

import asyncpg
import hookbus_asyncpg
import msgspec

from hookbus import Bus, PluginSet


class OrderPlaced(msgspec.Struct, frozen=True):
    order: int
    total: float = 0.0


def shop_bus() -> Bus:
    """A bus declaring ``order_placed``."""
    bus = Bus()
    bus.declare("order_placed", OrderPlaced)
    return bus


async def install_outbox(pool: asyncpg.Pool, bus: Bus) -> None:
    """Drop what an earlier test left and install the outbox plugin afresh."""
    await pool.execute(
        "DROP TABLE IF EXISTS hookbus_outbox, hookbus_outbox_cursor, hookbus_outbox_mode, "
        "hookbus_plugin, "
        "hookbus_stage, hookbus_batch CASCADE"
    )
    manager = hookbus_asyncpg.PluginManager(pool, PluginSet(bus, [hookbus_asyncpg.outbox_plugin()]))
    assert await manager.install() == ["hookbus_outbox"]
