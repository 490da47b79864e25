"""Agile Data: serve a load from a cache by breaking before_load; skip rows in after_load.

``raise Break(value)`` in a ``before_load`` hook answers the load with ``value``, and no
query runs; an ``after_load`` hook that raises ``Break()`` keeps a row out of the results.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from hookbus_asyncpg import Attribute, EntityType, Schema, Store, transaction
from hookbus_asyncpg.testing import run_with_pool

from hookbus import Break, Bus, LoadEvent, QueryEvent, is_instance

bus = Bus()
schema = Schema(
    entities=[
        EntityType("Country", code=Attribute(str, required=True), name=Attribute(str)),
        EntityType("Person", name=Attribute(str, required=True), private=Attribute(bool)),
    ]
)
store = Store(bus, schema)
cache: dict[int, Any] = {}
queries: list[str] = []


@bus.hook("before_load", select=is_instance("Country"))
def serve_from_cache(event: LoadEvent) -> None:
    if event.eid in cache:
        raise Break(cache[event.eid])


@bus.hook("after_load", select=is_instance("Country"))
def fill_cache(event: LoadEvent) -> None:
    cache[event.row.eid] = event.row


@bus.hook("after_load", select=is_instance("Person"))
def hide_private(event: LoadEvent) -> None:
    if event.row["private"]:
        raise Break()


@bus.hook("after_query")
def count_queries(event: QueryEvent) -> None:
    queries.append(event.sql.split(None, 1)[0])


async def main(pool: asyncpg.Pool) -> None:
    await store.create_tables(pool)
    async with transaction(pool):
        fr = await store.insert("Country", code="FR", name="France")
        await store.insert("Person", name="Ann", private=False)
        await store.insert("Person", name="Bob", private=True)
    assert fr is not None
    async with transaction(pool):
        queries.clear()
        first = await store.get(fr)
        print(f"first get: {dict(first)} ({len(queries)} query)")
        queries.clear()
        again = await store.get(fr)
        print(f"second get, from the cache: {dict(again)} ({len(queries)} queries)")
        people = await store.load("Person")
        print(f"people, private ones skipped by after_load: {[p['name'] for p in people]}")


if __name__ == "__main__":
    run_with_pool(main, "load_from_cache")
