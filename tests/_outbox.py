"""The outbox on a test database: its tables installed as ``hookbus install`` does, and an
application event to publish."""

from __future__ import annotations

import asyncpg
import hookbus_asyncpg
import msgspec
import pytest
import pytest_asyncio

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


# Rows keyed "gated" hold their transaction's COMMIT (a deferred trigger waits for the
# advisory lock GATE) after their INSERT took its id in COMMIT's message: the way to make a
# lower id commit last, now that an outbox row takes its id at COMMIT.
GATE = 4346  # the advisory lock the gated row's deferred trigger waits for at COMMIT
GATED_ROW = f"""
CREATE OR REPLACE FUNCTION gate_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({GATE});
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER gate_row AFTER INSERT ON hookbus_outbox DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.ordering_key = 'gated') EXECUTE FUNCTION gate_row();
"""


# The fixtures the relay tests share, registered in a module by importing them:
# ``from _outbox import bus_fixture, outbox_pool_fixture
@pytest.fixture(name="bus")
def bus_fixture() -> Bus:
    """``shop_bus()``."""
    return shop_bus()


@pytest_asyncio.fixture(name="outbox_pool")
async def outbox_pool_fixture(pool: asyncpg.Pool, bus: Bus) -> asyncpg.Pool:
    """The module's pool, the outbox installed afresh."""
    await install_outbox(pool, bus)
    return pool
