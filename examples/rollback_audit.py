"""Agile Data: an on-rollback audit; an operation records the failed attempt elsewhere.

The audit line is written on a connection of its own, outside the transaction that rolled
back: it survives the rollback, and nothing is written if the transaction commits.
"""

from __future__ import annotations

import asyncpg
from hookbus_asyncpg import Attribute, EntityType, Schema, Store, transaction
from hookbus_asyncpg.testing import run_with_pool

from hookbus import Bus, EntityEvent, Operation, ValidationError, current_transaction, is_instance

bus = Bus()
schema = Schema(
    entities=[EntityType("Account", owner=Attribute(str, required=True), balance=Attribute(int))]
)
store = Store(bus, schema)
POOL: asyncpg.Pool | None = None


class AuditOnRollback(Operation):
    def __init__(self, eid: int, change: dict[str, object]) -> None:
        super().__init__()
        self.eid, self.change = eid, change

    async def rollback(self) -> None:
        assert POOL is not None
        await POOL.execute(
            "INSERT INTO audit (eid, attempted) VALUES ($1, $2)", self.eid, repr(self.change)
        )


@bus.hook("before_update_entity", select=is_instance("Account"))
def audit_if_rolled_back(event: EntityEvent) -> None:
    current_transaction().add(AuditOnRollback(event.eid, dict(event.edited)))


@bus.hook("before_update_entity", select=is_instance("Account"), category="integrity")
def no_overdraft(event: EntityEvent) -> None:
    if event.edited.get("balance", 0) < 0:
        raise ValidationError(event.eid, {"balance": "no overdraft"})


async def main(pool: asyncpg.Pool) -> None:
    global POOL
    POOL = pool
    await store.create_tables(pool)
    await pool.execute("CREATE TABLE audit (eid bigint, attempted text)")
    async with transaction(pool):
        eid = await store.insert("Account", owner="Ann", balance=100)
    assert eid is not None
    async with transaction(pool):
        await store.update(eid, balance=50)
    print("balance 100 -> 50 committed: nothing audited")
    try:
        async with transaction(pool):
            await store.update(eid, balance=-20)
    except ValidationError as error:
        print(f"balance -20 refused: {error}")
    rows = await pool.fetch("SELECT eid, attempted FROM audit")
    print(f"audit after the rollback: {[dict(row) for row in rows]}")


if __name__ == "__main__":
    run_with_pool(main, "rollback_audit")
