"""Agile Data: soft delete; a before-delete hook flags the row and breaks the delete."""

from __future__ import annotations

import asyncpg
from hookbus_asyncpg import Attribute, EntityType, Schema, Store, transaction
from hookbus_asyncpg.testing import run_with_pool

from hookbus import Break, Bus, EntityEvent, is_instance

bus = Bus()
schema = Schema(
    entities=[
        EntityType(
            "Invoice", number=Attribute(str, required=True), deleted=Attribute(bool, default=False)
        )
    ]
)
store = Store(bus, schema)


@bus.hook("before_delete_entity", select=is_instance("Invoice"))
async def soft_delete(event: EntityEvent) -> None:
    await store.update(event.eid, deleted=True)
    raise Break("soft-deleted")


async def main(pool: asyncpg.Pool) -> None:
    await store.create_tables(pool)
    async with transaction(pool):
        first = await store.insert("Invoice", number="2026-001")
        await store.insert("Invoice", number="2026-002")
        assert first is not None
        deleted = await store.delete(first)
        print(f"delete(2026-001) happened: {deleted}")
        live = await store.load("Invoice", deleted=False)
        print(f"live invoices: {[row['number'] for row in live]}")
        print(f"2026-001 is still there, flagged: {dict(await store.get(first))}")


if __name__ == "__main__":
    run_with_pool(main, "soft_delete")
