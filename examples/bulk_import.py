"""A bulk import: 100,000 people through insert_many, checked by one accumulated operation.

The rows go to PostgreSQL in bulk, the events still fire per entity, and the hook on each
new Person only adds its email to one operation's list: the check runs once, at precommit,
over all of them (CubicWeb's set_operation: one operation for the whole import).
"""

from __future__ import annotations

import sys
import time
from collections import Counter

import asyncpg
from hookbus_asyncpg import Attribute, EntityType, Schema, Store, transaction
from hookbus_asyncpg.testing import run_with_pool

from hookbus import Bus, EntityEvent, Operation, ValidationError, current_transaction, is_instance

bus = Bus()
schema = Schema(
    entities=[
        EntityType("Person", email=Attribute(str, required=True), age=Attribute(int)),
    ]
)
store = Store(bus, schema)
ROWS = 100_000


class EmailsUniqueInImport(Operation):
    async def precommit(self) -> None:
        twice = [email for email, n in Counter(self.values).items() if n > 1]
        print(f"  precommit: one operation checked {len(self.values):,} emails")
        if twice:
            raise ValidationError(None, {"email": f"imported twice: {', '.join(twice[:3])}"})


@bus.hook("after_add_entity", select=is_instance("Person"), category="integrity")
def note_email(event: EntityEvent) -> None:
    current_transaction().accumulate(
        "emails", event.edited["email"], EmailsUniqueInImport, container=list
    )


class ProgressBar:
    """A progress bar on standard error; a line per quarter where that is not a terminal."""

    def __init__(self, label: str) -> None:
        self.label, self.shown = label, -1

    def __call__(self, done: int, total: int) -> None:
        filled = done * 40 // max(total, 1)
        if sys.stderr.isatty():
            sys.stderr.write(f"\r  {self.label} [{'#' * filled:<40}] {done:,}/{total:,}")
            if done == total:
                sys.stderr.write("\n")
        elif filled // 10 != self.shown:
            self.shown = filled // 10
            print(f"  {self.label}: {done:,}/{total:,}")


async def main(pool: asyncpg.Pool) -> None:
    await store.create_tables(pool)
    rows = [{"email": f"person{i}@example.org", "age": i % 90} for i in range(ROWS)]
    started = time.perf_counter()
    async with transaction(pool):
        eids = await store.insert_many("Person", rows, progress=ProgressBar("importing"))
    print(f"imported {len(eids):,} people in {time.perf_counter() - started:.1f} s")
    try:
        async with transaction(pool):
            await store.insert_many("Person", [{"email": "twin@example.org"}] * 2)
    except ValidationError as error:
        print(f"an import with a duplicate email was refused whole: {error}")


if __name__ == "__main__":
    run_with_pool(main, "bulk_import")
