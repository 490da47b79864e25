"""CubicWeb: a relation hook refuses a boss under the legal age."""

from __future__ import annotations

import asyncpg
from hookbus_asyncpg import Attribute, EntityType, RelationType, Schema, Store, transaction
from hookbus_asyncpg.testing import run_with_pool

from hookbus import Bus, RelationEvent, ValidationError, match_rtype

bus = Bus()
schema = Schema(
    entities=[
        EntityType("Person", name=Attribute(str, required=True), age=Attribute(int)),
        EntityType("Company", name=Attribute(str, required=True, unique=True)),
    ],
    relations=[RelationType("boss", "Company", "Person", cardinality="?*")],
)
store = Store(bus, schema)
LEGAL_AGE = 18


@bus.hook("before_add_relation", select=match_rtype("boss"), category="integrity")
async def boss_of_legal_age(event: RelationEvent) -> None:
    person = await store.get(event.eidto)
    if (person["age"] or 0) < LEGAL_AGE:
        raise ValidationError(
            event.eidfrom, {"boss": f"{person['name']} is under {LEGAL_AGE}: not a boss"}
        )


async def main(pool: asyncpg.Pool) -> None:
    await store.create_tables(pool)
    async with transaction(pool):
        acme = await store.insert("Company", name="Acme")
        ann = await store.insert("Person", name="Ann", age=40)
        kid = await store.insert("Person", name="Kid", age=12)
    assert acme is not None and ann is not None and kid is not None
    try:
        async with transaction(pool):
            await store.add_relation(acme, "boss", kid)
    except ValidationError as error:
        print(f"Kid as boss of Acme refused by boss_of_legal_age: {error.errors['boss']}")
    async with transaction(pool):
        await store.add_relation(acme, "boss", ann)
        bosses = await store.related(acme, "boss", role="subject")
    print(f"the boss of Acme: {[boss['name'] for boss in bosses]}")


if __name__ == "__main__":
    run_with_pool(main, "company_boss")
