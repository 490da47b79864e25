"""CubicWeb: an integrity hook keeps a Person's age between 0 and 120."""

from __future__ import annotations

import asyncpg
from hookbus_asyncpg import Attribute, EntityType, Schema, Store, transaction
from hookbus_asyncpg.testing import run_with_pool

from hookbus import Bus, EntityEvent, ValidationError, is_instance

bus = Bus()
schema = Schema(
    entities=[EntityType("Person", name=Attribute(str, required=True), age=Attribute(int))]
)
store = Store(bus, schema)


@bus.hook(
    "before_add_entity",
    "before_update_entity",
    select=is_instance("Person"),
    category="integrity",
)
async def person_age_range(event: EntityEvent) -> None:
    if "age" in event.edited and not 0 <= event.edited["age"] <= 120:
        raise ValidationError(event.eid, {"age": "age must be between 0 and 120"})


async def main(pool: asyncpg.Pool) -> None:
    await store.create_tables(pool)
    async with transaction(pool):
        ann = await store.insert("Person", name="Ann", age=40)
    print(f"added Person #{ann}, age 40")
    try:
        async with transaction(pool):
            await store.update(ann, age=130)
    except ValidationError as error:
        print(f"age 130 refused by person_age_range: {error.to_json().decode()}")
    async with transaction(pool):
        print(f"the database still holds: {dict(await store.get(ann))}")


if __name__ == "__main__":
    run_with_pool(main, "person_age")
