"""Store benchmark: ``Store.insert`` with three hooks against the same INSERT on bare asyncpg,
and ``Store.insert_many`` of 100,000 entities against a bare COPY.

Like with like: both sides write the same rows into the same tables (the entities table and
the type's table) with the same statement, on one pooled connection; the bare side takes
its eid from the sequence inside the statement, the store from a block fetched ahead. Cases:

* one insert per transaction: hookbus_asyncpg.transaction + store.insert, against asyncpg's
  conn.transaction() + the INSERT (what the per-request path costs);
* 100 inserts in one transaction: the per-insert cost of the store, events and all;
* insert_many of 100,000 rows (events per entity, COPY) against the eids + two bare COPYs,
  with the three hooks and with none;
* under load: 1,000 concurrent scopes on a pool of 20, each one store.insert, against the
  same INSERT in bare asyncpg transactions, as scopes per second (>= 1 is bare's speed).

Two rows attribute the first case: the same with ``find_outcome=False`` (the scope's COMMIT
without the transaction-id notice), and a bare INSERT inside a hookbus scope (the scope's
share alone, no store).

Rounds are interleaved in one process, the order flipped every round; the table shows the
median of the per-round ratios store / bare and their quartiles. Target: single insert with
hooks <= 1.3x bare asyncpg. A database of its own is created on the server (``HOOKBUS_DSN``,
else the local one, else an embedded one) and dropped after.

    python benchmarks/store.py [--dsn DSN] [--rounds 15] [--many 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import asyncpg
from hookbus_asyncpg import Attribute, EntityType, Schema, Store, transaction
from hookbus_asyncpg.testing import run_with_database

import hookbus
from hookbus import EntityEvent, ValidationError, is_instance

SCHEMA = Schema(
    entities=[
        EntityType(
            "Person",
            name=Attribute(str, required=True),
            age=Attribute(int),
            deleted=Attribute(bool, default=False),
        )
    ]
)
# What the store sends for an insert, with the eid drawn inside the statement instead.
BARE_INSERT = (
    "WITH e AS (INSERT INTO hookbus_entities (eid, etype) "
    "VALUES (nextval('hookbus_eid_seq'), 'Person') RETURNING eid) "
    'INSERT INTO "person" (eid, "name", "age", "deleted") SELECT eid, $1, $2, $3 FROM e '
    'RETURNING eid, "name", "age", "deleted"'
)
ALLOCATE = "SELECT array_agg(nextval('hookbus_eid_seq')) FROM generate_series(1, $1::int)"
PER_TRANSACTION = 100


def hooked_store() -> Store:
    """A store with three hooks: two before (a check, an edit), one after."""
    bus = hookbus.Bus()

    @bus.hook("before_add_entity", select=is_instance("Person"), category="integrity")
    async def age_range(event: EntityEvent) -> None:
        age = event.edited.get("age")
        if age is not None and not 0 <= age <= 120:
            raise ValidationError(event.eid, {"age": "age must be between 0 and 120"})

    @bus.hook("before_add_entity", select=is_instance("Person"), category="metadata")
    def strip_name(event: EntityEvent) -> None:
        event.edited["name"] = event.edited["name"].strip()

    counted = [0]

    @bus.hook("after_add_entity", select=is_instance("Person"), category="notification")
    def count(event: EntityEvent) -> None:
        counted[0] += 1

    return Store(bus, SCHEMA)


Case = tuple[str, Callable[[], Awaitable[object]], Callable[[], Awaitable[object]], int]


def cases(pool: asyncpg.Pool, store: Store, plain: Store, many: int) -> list[Case]:
    rows = [{"name": f"person {i}", "age": i % 100} for i in range(many)]

    async def store_one() -> None:
        async with transaction(pool):
            await store.insert("Person", name="Ann", age=40)

    async def bare_one() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.fetch(BARE_INSERT, "Ann", 40, False)

    async def scope_only() -> None:  # attribution: the scope's share, without the store
        async with transaction(pool) as tx:
            await tx.connection.fetch(BARE_INSERT, "Ann", 40, False)

    async def store_one_no_find() -> None:
        async with transaction(pool, find_outcome=False):
            await store.insert("Person", name="Ann", age=40)

    async def store_batch() -> None:
        async with transaction(pool):
            for _ in range(PER_TRANSACTION):
                await store.insert("Person", name="Ann", age=40)

    async def bare_batch() -> None:
        async with pool.acquire() as conn, conn.transaction():
            for _ in range(PER_TRANSACTION):
                await conn.fetch(BARE_INSERT, "Ann", 40, False)

    async def store_many() -> None:
        async with transaction(pool):
            await store.insert_many("Person", rows)

    async def plain_many() -> None:  # no hook at all
        async with transaction(pool):
            await plain.insert_many("Person", rows)

    async def bare_many() -> None:
        async with pool.acquire() as conn, conn.transaction():
            eids = await conn.fetchval(ALLOCATE, len(rows))
            records = [
                (eid, row["name"], row["age"], False) for eid, row in zip(eids, rows, strict=True)
            ]
            await conn.copy_records_to_table(
                "hookbus_entities", records=[(eid, "Person") for eid in eids]
            )
            await conn.copy_records_to_table(
                "person", records=records, columns=["eid", "name", "age", "deleted"]
            )

    return [
        ("insert, 1 per transaction", store_one, bare_one, 200),
        ("  same, find_outcome=False", store_one_no_find, bare_one, 200),
        ("  bare INSERT in hookbus scope", scope_only, bare_one, 200),
        (f"insert, {PER_TRANSACTION} per transaction", store_batch, bare_batch, 4),
        (f"insert_many {many:,} vs COPY", store_many, bare_many, 1),
        ("  same, no hooks", plain_many, bare_many, 1),
    ]


async def timed(fn: Callable[[], Awaitable[object]], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        await fn()
    return (time.perf_counter() - start) / repeat


async def run(dsn: str, rounds: int, many: int) -> None:
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        store = hooked_store()
        await store.create_tables(pool)
        plain = Store(hookbus.Bus(), SCHEMA)
        print(f"{'case':<30} {'bare ms':>9} {'store ms':>9} {'ratio':>7} {'quartiles':>13}")
        for label, hooked, bare, repeat in cases(pool, store, plain, many):
            await timed(hooked, repeat)  # warm up both sides: prepared statements, eid block
            await timed(bare, repeat)
            bares: list[float] = []
            stores: list[float] = []
            for r in range(rounds):
                pair: list[tuple[list[float], Callable[[], Awaitable[object]]]] = [
                    (stores, hooked),
                    (bares, bare),
                ]
                for samples, fn in pair if r % 2 else reversed(pair):
                    samples.append(await timed(fn, repeat))
                await pool.execute("TRUNCATE hookbus_entities CASCADE")
            ratios = [s / b for s, b in zip(stores, bares, strict=True)]
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            print(
                f"{label:<30} {statistics.median(bares) * 1e3:>9.3f} "
                f"{statistics.median(stores) * 1e3:>9.3f} {statistics.median(ratios):>7.3f} "
                f"{f'{q1:.3f}-{q3:.3f}':>13}"
            )


CONCURRENT, POOL = 1000, 20


async def concurrent(dsn: str, rounds: int) -> None:
    async with asyncpg.create_pool(dsn, min_size=POOL, max_size=POOL) as pool:
        store = hooked_store()
        await store.create_tables(pool)

        async def store_one(i: int) -> None:
            async with transaction(pool):
                await store.insert("Person", name="Ann", age=40)

        async def bare_one(i: int) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await conn.fetch(BARE_INSERT, "Ann", 40, False)

        async def wave(one: Callable[[int], Awaitable[None]]) -> float:
            start = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(CONCURRENT)))
            return time.perf_counter() - start

        await wave(store_one)  # warm up
        await wave(bare_one)
        stores, bares = [], []
        for r in range(rounds):
            if r % 2:
                b, s = await wave(bare_one), await wave(store_one)
            else:
                s, b = await wave(store_one), await wave(bare_one)
            stores.append(s)
            bares.append(b)
            await pool.execute("TRUNCATE hookbus_entities CASCADE")
        ratio = statistics.median(b / s for b, s in zip(bares, stores, strict=True))
        print(
            f"\n{CONCURRENT} concurrent scopes on a pool of {POOL}, one insert each: "
            f"bare {CONCURRENT / statistics.median(bares):.0f} /s, store "
            f"{CONCURRENT / statistics.median(stores):.0f} /s, store / bare {ratio:.3f} "
            "(scopes/s, median of paired rounds)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dsn", help="the PostgreSQL server (default: HOOKBUS_DSN's rule)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--many", type=int, default=100_000)
    args = parser.parse_args()
    run_with_database(lambda dsn: run(dsn, args.rounds, args.many), "bench_store", dsn=args.dsn)
    run_with_database(
        lambda dsn: concurrent(dsn, max(3, args.rounds // 3)), "bench_store_load", dsn=args.dsn
    )


if __name__ == "__main__":
    main()
