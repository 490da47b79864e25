"""CubicWeb: the subsidiary-of cycle check, one accumulated operation run at precommit.

A hook on every new ``subsidiary_of`` relation only notes the company; the check runs once,
at precommit, when every relation of the transaction is set, so that a transaction that
moves companies around is judged on where it ends, not on a step in between.
"""

from __future__ import annotations

import asyncpg
from hookbus_asyncpg import Attribute, EntityType, RelationType, Schema, Store, transaction
from hookbus_asyncpg.testing import run_with_pool

from hookbus import (
    Bus,
    Operation,
    RelationEvent,
    ValidationError,
    current_transaction,
    match_rtype,
)

bus = Bus()
schema = Schema(
    entities=[EntityType("Company", name=Attribute(str, required=True, unique=True))],
    relations=[RelationType("subsidiary_of", "Company", "Company", cardinality="?*")],
)
store = Store(bus, schema)


class CheckSubsidiaryCycle(Operation):
    """Walks up from each company noted in the transaction; meeting it again is a cycle."""

    async def precommit(self) -> None:
        print(f"  precommit: one check, for the companies {sorted(self.values)}")
        for eid in sorted(self.values):
            seen = {eid}
            parents = await store.related(eid, "subsidiary_of", role="subject")
            while parents:
                parent = parents[0].eid
                if parent in seen:
                    raise ValidationError(
                        eid, {"subsidiary_of": "a company cannot be its own subsidiary"}
                    )
                seen.add(parent)
                parents = await store.related(parent, "subsidiary_of", role="subject")


@bus.hook("after_add_relation", select=match_rtype("subsidiary_of"), category="integrity")
def check_cycle_at_precommit(event: RelationEvent) -> None:
    current_transaction().accumulate("subsidiary_cycle", event.eidfrom, CheckSubsidiaryCycle)


async def main(pool: asyncpg.Pool) -> None:
    await store.create_tables(pool)
    async with transaction(pool):
        a, b, c = [await store.insert("Company", name=name) for name in ("A", "B", "C")]
    assert a is not None and b is not None and c is not None
    print("A subsidiary of B, B of C: no cycle")
    async with transaction(pool):
        await store.add_relation(a, "subsidiary_of", b)
        await store.add_relation(b, "subsidiary_of", c)
    print("C subsidiary of A would close the loop:")
    try:
        async with transaction(pool):
            await store.add_relation(c, "subsidiary_of", a)
    except ValidationError as error:
        print(f"  refused at precommit: {error}")
    print("in one transaction, C subsidiary of A and A's link to B removed: no cycle at the end")
    async with transaction(pool):
        await store.add_relation(c, "subsidiary_of", a)
        await store.delete_relation(a, "subsidiary_of", b)
    print("  committed")


if __name__ == "__main__":
    run_with_pool(main, "subsidiary_cycle")
