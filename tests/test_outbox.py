"""The outbox writer: an event marked for publication exists if and only if its data committed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import hookbus_asyncpg
import msgspec
import pytest
import pytest_asyncio
from _outbox import OrderPlaced, install_outbox, shop_bus
from hookbus_asyncpg import EntityMessage, Outbox, RelationMessage, wire_type

from hookbus import (
    Bus,
    EntityEvent,
    RelationEvent,
    TransactionStateError,
    UnknownEventError,
)


@pytest.fixture
def bus() -> Bus:
    return shop_bus()


@pytest_asyncio.fixture
async def outbox_pool(pool: asyncpg.Pool, bus: Bus) -> AsyncIterator[asyncpg.Pool]:
    """The module's pool, with the outbox plugin installed (as ``hookbus install`` does)."""
    await install_outbox(pool, bus)
    await pool.execute("CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY)")
    await pool.execute("TRUNCATE orders")
    yield pool


async def rows(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM hookbus_outbox ORDER BY id")


async def test_a_committed_event_is_written_with_its_transaction_id(
    outbox_pool: asyncpg.Pool, bus: Bus
) -> None:
    outbox = Outbox(bus, subject_prefix="shop")
    async with hookbus_asyncpg.transaction(outbox_pool) as tx:
        await tx.connection.execute("INSERT INTO orders VALUES (1)")
        xid = await tx.connection.fetchval("SELECT pg_current_xact_id()::text")
        msg_id = await outbox.publish(tx, "order_placed", OrderPlaced(1, 9.5), key="order-1")
    (row,) = await rows(outbox_pool)
    assert row["msg_id"] == msg_id and len(msg_id) == 36
    assert str(row["xid"]) == xid
    assert row["subject"] == "shop.order_placed" and row["event"] == "order_placed"
    assert row["ordering_key"] == "order-1"
    assert msgspec.json.decode(row["payload"], type=OrderPlaced) == OrderPlaced(1, 9.5)


async def test_a_rolled_back_transaction_leaves_no_event(
    outbox_pool: asyncpg.Pool, bus: Bus
) -> None:
    outbox = Outbox(bus)
    with pytest.raises(RuntimeError, match="refused"):
        async with hookbus_asyncpg.transaction(outbox_pool) as tx:
            await outbox.publish(tx, "order_placed", OrderPlaced(1, 1.0))
            raise RuntimeError("refused")
    async with hookbus_asyncpg.transaction(outbox_pool) as tx:
        await outbox.publish(tx, "order_placed", OrderPlaced(2, 2.0))
        with pytest.raises(RuntimeError):
            async with tx.savepoint():
                await outbox.publish(tx, "order_placed", OrderPlaced(3, 3.0))
                raise RuntimeError("savepoint")
    assert [msgspec.json.decode(r["payload"])["order"] for r in await rows(outbox_pool)] == [2]


async def test_bad_events_are_refused_at_the_call(outbox_pool: asyncpg.Pool, bus: Bus) -> None:
    outbox = Outbox(bus)
    async with hookbus_asyncpg.transaction(outbox_pool) as tx:
        with pytest.raises(UnknownEventError, match="order_placed"):
            await outbox.publish(tx, "order_placd", OrderPlaced(1, 1.0))
        with pytest.raises(TypeError, match="OrderPlaced"):
            await outbox.publish(tx, "order_placed", {"order": 1})  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="cannot be published"):
            await outbox.publish(tx, "session_open", msgspec.Struct())
        with pytest.raises(ValueError, match="subject"):
            await outbox.publish(tx, "order_placed", OrderPlaced(1, 1.0), subject="a.*")
    with pytest.raises(TransactionStateError):
        await outbox.publish(tx, "order_placed", OrderPlaced(1, 1.0))
    with pytest.raises(UnknownEventError, match="order_placed"):
        Outbox(bus, events=["order_placd"])
    assert await rows(outbox_pool) == []


async def test_entity_and_relation_events_go_as_plain_values(
    outbox_pool: asyncpg.Pool, bus: Bus
) -> None:
    outbox = Outbox(bus, headers=lambda: {"traceparent": "00-abc-def-01"})
    async with hookbus_asyncpg.transaction(outbox_pool) as tx:
        entity = hookbus_asyncpg.Entity("Person", 7, {"name": "Ada", "age": 36})
        event = EntityEvent("after_add_entity", "Person", 7, {"age": 36}, entity, tx=tx)
        await outbox.publish(tx, "after_add_entity", event)
        relation = RelationEvent("after_add_relation", "knows", 7, 8, tx=tx)
        await outbox.publish(tx, "after_add_relation", relation)
    added, related = await rows(outbox_pool)
    spec = {s.name: s for s in bus.events()}
    assert wire_type(spec["after_add_entity"]) is EntityMessage
    assert msgspec.json.decode(added["payload"], type=EntityMessage) == EntityMessage(
        event="after_add_entity",
        etype="Person",
        eid=7,
        edited={"age": 36},
        entity={"name": "Ada", "age": 36},
    )
    assert msgspec.json.decode(related["payload"], type=RelationMessage) == RelationMessage(
        event="after_add_relation", rtype="knows", eidfrom=7, eidto=8
    )
    assert b"tx" not in added["payload"]
    assert json.loads(added["headers"]) == {"traceparent": "00-abc-def-01"}


async def test_a_listener_is_woken_at_commit_only(
    outbox_pool: asyncpg.Pool, bus: Bus, conn: asyncpg.Connection
) -> None:
    outbox = Outbox(bus)
    heard: list[str] = []
    await conn.add_listener("hookbus_outbox", lambda *args: heard.append(args[2]))
    async with hookbus_asyncpg.transaction(outbox_pool) as tx:
        await outbox.publish(tx, "order_placed", OrderPlaced(1, 1.0))
        await conn.execute("SELECT 1")  # any notification delivered by now is read
        assert heard == []
    await conn.execute("SELECT 1")
    assert heard == ["hookbus_outbox"]
