"""Transaction benchmark: hookbus_asyncpg.transaction against a bare asyncpg transaction.

The same work on both sides (BEGIN, a few INSERTs, COMMIT on a pooled connection); the
hookbus side also schedules N operations (or accumulates 100,000 values into one). Rounds are
interleaved in one process, the order flipped every round; the table shows the median of the
paired ratios hookbus / bare. It runs in a database of its own, created on the server
(``HOOKBUS_DSN``, else the local one, else an embedded one) and dropped after.

Then, under load: 1,000 concurrent scopes on a pool of 20, each one INSERT through
``tx.connection`` (and empty scopes), against the same through bare asyncpg, as a ratio of
scopes per second (>= 1 is as fast as bare); and 1,000 concurrent scopes whose postcommit
takes a connection from the scope's own pool (it must finish: the scope's connection is back
in the pool before postcommit runs). And the floors, in memory: per scheduled operation
against a list append and an awaited loop, per accumulated value against a hand-written
lookup and add. And the carriers of the transaction's id with COMMIT (``--part carriers``):
after one INSERT, each against a plain COMMIT, on the driver alone (no scope).

    python benchmarks/transaction.py [--dsn DSN] [--rounds 30] [--batch 50] [--part ...]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import hookbus_asyncpg
from hookbus_asyncpg.testing import run_with_database

import hookbus

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from benchmarks._timing import Pair, Subject, run_pairs  # noqa: E402

INSERTS = 3
CONCURRENT = 1000  # scopes at once, on a pool of POOL
POOL = 20
ONE = "INSERT INTO hookbus_bench VALUES ($1)"
RETURNING = "INSERT INTO hookbus_bench VALUES ($1) RETURNING pg_current_xact_id()::text"


class Noop(hookbus.Operation):
    """An operation with a precommit and a postcommit that do nothing."""

    async def precommit(self) -> None:
        pass

    async def postcommit(self) -> None:
        pass


def bare_of(inserts: int) -> Callable[[asyncpg.Pool, int], Awaitable[None]]:
    async def bare(pool: asyncpg.Pool, n: int) -> None:
        async with pool.acquire() as conn, conn.transaction():
            for i in range(inserts):
                await conn.execute(ONE, i)

    return bare


def hooked(
    accumulate: bool, find: bool, inserts: int = INSERTS
) -> Callable[[asyncpg.Pool, int], Awaitable[None]]:
    async def run(pool: asyncpg.Pool, n: int) -> None:
        async with hookbus_asyncpg.transaction(pool, find_outcome=find) as tx:
            conn = tx.connection
            for i in range(inserts):
                await conn.execute(ONE, i)
            if accumulate:
                for i in range(n):
                    tx.accumulate("rows", i, Noop)
            else:
                for _ in range(n):
                    tx.add(Noop())

    return run


async def timed(
    fn: Callable[[asyncpg.Pool, int], Awaitable[None]], pool: asyncpg.Pool, n: int, batch: int
) -> float:
    start = time.perf_counter()
    for _ in range(batch):
        await fn(pool, n)
    return (time.perf_counter() - start) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="the PostgreSQL server (default: HOOKBUS_DSN's rule)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument(
        "--part",
        choices=("scope", "concurrent", "floors", "carriers"),
        action="append",
        help="(all)",
    )
    args = parser.parse_args()
    parts = args.part or ["scope", "concurrent", "floors", "carriers"]
    if "floors" in parts:
        asyncio.run(floors(args.rounds))
    if "scope" in parts:
        run_with_database(lambda dsn: measure(dsn, args), "bench_transaction", dsn=args.dsn)
    if "concurrent" in parts:
        run_with_database(lambda dsn: concurrent(dsn, args), "bench_concurrent", dsn=args.dsn)
    if "carriers" in parts:
        run_with_database(lambda dsn: carriers(dsn, args.rounds), "bench_carriers", dsn=args.dsn)


async def measure(dsn: str, args: argparse.Namespace) -> None:
    cases = [
        ("one INSERT, N = 0", 0, False, True, args.batch, 1),
        ("N = 0", 0, False, True, args.batch, INSERTS),
        ("N = 10", 10, False, True, args.batch, INSERTS),
        ("N = 1000", 1000, False, True, args.batch, INSERTS),
        ("accumulate 100,000", 100_000, True, True, max(1, args.batch // 10), INSERTS),
        # without the transaction-id read that lets a lost COMMIT's outcome be found out
        ("one INSERT, no find", 0, False, False, args.batch, 1),
        ("N = 0, no find", 0, False, False, args.batch, INSERTS),
        ("N = 10, no find", 10, False, False, args.batch, INSERTS),
    ]
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        await pool.execute("CREATE UNLOGGED TABLE IF NOT EXISTS hookbus_bench (n int)")
        print(f"{'case':<20} {'bare ms':>9} {'hookbus ms':>11} {'ratio (median)':>15}")
        for label, n, accumulate, find, batch, inserts in cases:
            fn, bare = hooked(accumulate, find, inserts), bare_of(inserts)
            await timed(bare, pool, n, batch)  # warm up both sides
            await timed(fn, pool, n, batch)
            bares, hooks, ratios = [], [], []
            for r in range(args.rounds):
                if r % 2:
                    b = await timed(bare, pool, n, batch)
                    h = await timed(fn, pool, n, batch)
                else:
                    h = await timed(fn, pool, n, batch)
                    b = await timed(bare, pool, n, batch)
                bares.append(b)
                hooks.append(h)
                ratios.append(h / b)
            await pool.execute("TRUNCATE hookbus_bench")
            print(
                f"{label:<20} {statistics.median(bares) * 1e3:>9.3f} "
                f"{statistics.median(hooks) * 1e3:>11.3f} {statistics.median(ratios):>15.3f}"
            )
        await pool.execute("DROP TABLE hookbus_bench")


# -- under load: many scopes at once on a small pool ---------------------------------------------


class Borrow(hookbus.Operation):
    """A postcommit that takes a connection from the scope's own pool and writes."""

    def __init__(self, pool: asyncpg.Pool, row: int) -> None:
        super().__init__()
        self.pool, self.row = pool, row

    async def postcommit(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(ONE, -1 - self.row)


async def concurrent(dsn: str, args: argparse.Namespace) -> None:
    async with asyncpg.create_pool(dsn, min_size=POOL, max_size=POOL) as pool:
        await pool.execute("CREATE UNLOGGED TABLE IF NOT EXISTS hookbus_bench (n int)")

        async def bare_one(i: int) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(ONE, i)

        async def hooked_one(i: int) -> None:
            async with hookbus_asyncpg.transaction(pool) as tx:
                await tx.connection.execute(ONE, i)

        async def hooked_no_find(i: int) -> None:
            async with hookbus_asyncpg.transaction(pool, find_outcome=False) as tx:
                await tx.connection.execute(ONE, i)

        async def hooked_returning(i: int) -> None:
            # The id read from the write itself (as the store's inserts do): a plain COMMIT.
            async with hookbus_asyncpg.transaction(pool) as tx:
                xid = await tx.connection.fetchval(RETURNING, i)
                tx.note_transaction_id(xid)

        async def bare_returning(i: int) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await conn.fetchval(RETURNING, i)

        async def bare_empty(i: int) -> None:
            async with pool.acquire() as conn, conn.transaction():
                pass

        async def hooked_empty(i: int) -> None:
            async with hookbus_asyncpg.transaction(pool):
                pass

        async def borrowing(i: int) -> None:
            async with hookbus_asyncpg.transaction(pool) as tx:
                await tx.connection.execute(ONE, i)
                tx.add(Borrow(pool, i))

        async def wave(one: Callable[[int], Awaitable[None]]) -> float:
            start = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(CONCURRENT)))
            return time.perf_counter() - start

        rounds = max(3, args.rounds // 3)
        print(f"\n{CONCURRENT} concurrent scopes on a pool of {POOL}: scopes/s, hookbus / bare")
        print(f"{'case':<26} {'bare /s':>9} {'hookbus /s':>11} {'ratio (median)':>15}")
        for label, hooked_fn, bare_fn in (
            ("one INSERT each", hooked_one, bare_one),
            ("one INSERT, no find", hooked_no_find, bare_one),
            ("one INSERT RETURNING xid", hooked_returning, bare_returning),
            ("empty scopes", hooked_empty, bare_empty),
        ):
            await wave(hooked_fn)  # warm up both sides
            await wave(bare_fn)
            bares, hooks = [], []
            for r in range(rounds):
                if r % 2:
                    b, h = await wave(bare_fn), await wave(hooked_fn)
                else:
                    h, b = await wave(hooked_fn), await wave(bare_fn)
                bares.append(b)
                hooks.append(h)
            await pool.execute("TRUNCATE hookbus_bench")
            ratio = statistics.median(b / h for b, h in zip(bares, hooks, strict=True))
            print(
                f"{label:<26} {CONCURRENT / statistics.median(bares):>9.0f} "
                f"{CONCURRENT / statistics.median(hooks):>11.0f} {ratio:>15.3f}"
            )
        # Every postcommit takes a connection from the pool the 1,000 scopes share: with the
        # scope's connection held through postcommit this never finished.
        with anyio.fail_after(120):
            took = await wave(borrowing)
        done = await pool.fetchval("SELECT count(*) FROM hookbus_bench WHERE n < 0")
        print(
            f"postcommit borrowing from the full pool: {CONCURRENT} scopes finished in "
            f"{took:.2f} s ({CONCURRENT / took:.0f} /s), {done} postcommits ran"
        )
        assert done == CONCURRENT
        await pool.execute("DROP TABLE hookbus_bench")


# -- floors, in memory ---------------------------------------------------------------------------

OPS = 1000
VALUES = 10_000


class Nothing(hookbus.Operation):
    async def precommit(self) -> None:
        pass

    async def postcommit(self) -> None:
        pass


async def scheduled(ops: list[hookbus.Operation]) -> None:
    async with hookbus.transaction() as tx:
        add = tx.add
        for op in ops:
            add(op)


async def appended(ops: list[hookbus.Operation]) -> None:
    # The floor: a list append per operation, then an awaited loop per phase.
    pending: list[hookbus.Operation] = []
    for op in ops:
        pending.append(op)
    for op in pending:
        await op.precommit()
    for op in pending:
        await op.postcommit()


async def accumulated(values: range) -> None:
    async with hookbus.transaction() as tx:
        accumulate = tx.accumulate
        for value in values:
            accumulate("key", value, Nothing)


async def accumulated_many(values: range) -> None:
    async with hookbus.transaction() as tx:
        tx.accumulate_many("key", values, Nothing)


def by_hand(into: dict[Any, Any], key: Any, value: Any) -> None:
    # The floor: a hand-written function doing the same lookup and add.
    try:
        into[key].add(value)
    except KeyError:
        into[key] = {value}


async def added_by_hand(values: range) -> None:
    into: dict[Any, Any] = {}
    for value in values:
        by_hand(into, "key", value)


async def floors(rounds: int) -> None:
    ops: list[hookbus.Operation] = [Nothing() for _ in range(OPS)]
    values = range(VALUES)
    pairs = [
        Pair(
            f"per operation ({OPS})",
            Subject("tx.add", scheduled, (ops,)),
            Subject("append + awaited loop", appended, (ops,)),
        ),
        Pair(
            f"per value ({VALUES})",
            Subject("tx.accumulate", accumulated, (values,)),
            Subject("lookup and add by hand", added_by_hand, (values,)),
        ),
        Pair(
            f"accumulate_many ({VALUES})",
            Subject("tx.accumulate_many", accumulated_many, (values,)),
            Subject("lookup and add by hand", added_by_hand, (values,)),
        ),
    ]
    await run_pairs(pairs, rounds, 20e6, max_iterations=2000)
    print("floors, in memory: hookbus / hand-written, median of paired rounds")
    print(f"{'case':<22} {'hookbus ns':>11} {'floor ns':>9} {'ratio':>7} {'quartiles':>13}")
    for pair, count in zip(pairs, (OPS, VALUES, VALUES), strict=True):
        q1, q3 = pair.spread
        now = statistics.median(pair.subject_ns) / count
        floor = statistics.median(pair.floor_ns) / count
        print(
            f"{pair.workload:<22} {now:>11.0f} {floor:>9.0f} {pair.ratio:>7.3f} "
            f"{f'{q1:.3f}-{q3:.3f}':>13}"
        )


# -- carriers of the transaction id --------------------------------------------------------------

_NOTICE = (
    "DO $$BEGIN RAISE NOTICE 'hookbus xid 0123456789abcdef %', "
    "pg_current_xact_id_if_assigned(); END$$"
)
_IF_ASSIGNED = (
    "DO $$DECLARE x xid8 := pg_current_xact_id_if_assigned(); BEGIN IF x IS NOT NULL THEN "
    "RAISE NOTICE 'hookbus xid 0123456789abcdef %', x; END IF; END$$"
)
CARRIERS = {
    # what hookbus sends for a scope whose writes were the user's own SQL
    "SAVEPOINT, SET LOCAL, DO, COMMIT": (
        f"SAVEPOINT hookbus_xid; SET LOCAL client_min_messages = notice; {_NOTICE}; COMMIT"
    ),
    "SET LOCAL, DO, COMMIT (no savepoint)": (
        f"SET LOCAL client_min_messages = notice; {_NOTICE}; COMMIT"
    ),
    "DO only if an id was assigned": (
        f"SAVEPOINT hookbus_xid; SET LOCAL client_min_messages = notice; {_IF_ASSIGNED}; COMMIT"
    ),
}


async def carriers(dsn: str, rounds: int) -> None:
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        await pool.execute("CREATE UNLOGGED TABLE IF NOT EXISTS hookbus_bench (n int)")

        async def plain(pool: asyncpg.Pool) -> None:
            async with pool.acquire() as conn:
                await conn.execute("BEGIN")
                await conn.execute(ONE, 1)
                await conn.execute("COMMIT")

        def carrying(sql: str) -> Callable[[asyncpg.Pool], Awaitable[None]]:
            async def run(pool: asyncpg.Pool) -> None:
                async with pool.acquire() as conn:
                    await conn.execute("BEGIN")
                    await conn.execute(ONE, 1)
                    await conn.execute(sql)

            return run

        async def returning(pool: asyncpg.Pool) -> None:  # the store's: the id from the write
            async with pool.acquire() as conn:
                await conn.execute("BEGIN")
                await conn.fetchval(RETURNING, 1)
                await conn.execute("COMMIT")

        async def round_trip(pool: asyncpg.Pool) -> None:
            async with pool.acquire() as conn:
                await conn.execute("BEGIN")
                await conn.execute(ONE, 1)
                await conn.fetchval("SELECT pg_current_xact_id_if_assigned()::text")
                await conn.execute("COMMIT")

        floor = Subject("plain COMMIT", plain, (pool,))
        pairs = [
            Pair(name, Subject(name, carrying(sql), (pool,)), floor)
            for name, sql in CARRIERS.items()
        ]
        pairs.append(
            Pair("INSERT RETURNING the id", Subject("returning", returning, (pool,)), floor)
        )
        pairs.append(
            Pair("a separate round trip", Subject("round trip", round_trip, (pool,)), floor)
        )
        await run_pairs(pairs, rounds, 30e6, max_iterations=400)
        print("\nthe transaction id with COMMIT, after one INSERT: / a plain COMMIT")
        for pair in pairs:
            q1, q3 = pair.spread
            print(f"{pair.workload:<38} {pair.ratio:>7.3f} {f'{q1:.3f}-{q3:.3f}':>13}")
        await pool.execute("DROP TABLE hookbus_bench")


if __name__ == "__main__":
    main()
