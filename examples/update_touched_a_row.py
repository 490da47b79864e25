"""Agile Data: refuse an UPDATE that touched no row, from the after_query event.

The repository here writes its own SQL and emits the query events by hand, as any code
with its own SQL can: the hook sees the statement, its arguments and the rows affected.
"""

from __future__ import annotations

import asyncpg
from hookbus_asyncpg import transaction
from hookbus_asyncpg.testing import run_with_pool

from hookbus import Bus, QueryEvent, current_transaction

bus = Bus()


class NothingUpdatedError(Exception):
    """An UPDATE matched no row: the caller's idea of the data is out of date."""


@bus.hook("after_query", category="integrity")
def update_must_touch_a_row(event: QueryEvent) -> None:
    if event.sql.lstrip().upper().startswith("UPDATE") and event.status == 0:
        raise NothingUpdatedError(f"no row matched: {event.sql} {event.args}")


async def execute(sql: str, *args: object) -> int:
    """Run ``sql`` in the current scope, emitting before_query and after_query."""
    conn = current_transaction().connection  # type: ignore[attr-defined]
    await bus.emit("before_query", QueryEvent("before_query", sql, args))
    status = await conn.execute(sql, *args)
    affected = int(status.rsplit(" ", 1)[-1])
    await bus.emit("after_query", QueryEvent("after_query", sql, args, affected))
    return affected


async def main(pool: asyncpg.Pool) -> None:
    await pool.execute("CREATE TABLE stock (sku text PRIMARY KEY, quantity int NOT NULL)")
    await pool.execute("INSERT INTO stock VALUES ('apple', 10)")
    async with transaction(pool):
        await execute("UPDATE stock SET quantity = quantity - $2 WHERE sku = $1", "apple", 3)
    print("took 3 apples: one row updated")
    try:
        async with transaction(pool):
            await execute("UPDATE stock SET quantity = quantity - $2 WHERE sku = $1", "pear", 1)
    except NothingUpdatedError as error:
        print(f"refused and rolled back: {error}")
    print(f"stock: {dict(await pool.fetch('SELECT sku, quantity FROM stock'))}")


if __name__ == "__main__":
    run_with_pool(main, "update_touched_a_row")
