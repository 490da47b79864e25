"""Agile Data: a before-save hook upper-cases names; the edited value is what is written."""

from __future__ import annotations

import asyncpg
from hookbus_asyncpg import Attribute, EntityType, Schema, Store, transaction
from hookbus_asyncpg.testing import run_with_pool

from hookbus import Bus, EntityEvent, is_instance

bus = Bus()
schema = Schema(entities=[EntityType("Person", name=Attribute(str, required=True))])
store = Store(bus, schema)


@bus.hook("before_add_entity", "before_update_entity", select=is_instance("Person"))
def upper_case_name(event: EntityEvent) -> None:
    if "name" in event.edited:
        event.edited["name"] = event.edited["name"].upper()


async def main(pool: asyncpg.Pool) -> None:
    await store.create_tables(pool)
    async with transaction(pool):
        eid = await store.insert("Person", name="ann lee")
        assert eid is not None
        print(f"inserted 'ann lee', stored {(await store.get(eid))['name']!r}")
        await store.update(eid, name="ann smith")
        print(f"updated to 'ann smith', stored {(await store.get(eid))['name']!r}")


if __name__ == "__main__":
    run_with_pool(main, "upper_case_names")
