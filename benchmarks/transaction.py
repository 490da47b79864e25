"""Transaction benchmark: hookbus_asyncpg.transaction against a bare asyncpg transaction.

The same work on both sides (BEGIN, a few INSERTs, COMMIT on a pooled connection); the
hookbus side also schedules N operations (or accumulates 100,000 values into one). Rounds are
interleaved in one process, the order flipped every round; the table shows the median of the
paired ratios hookbus / bare. It runs in a database of its own, created on the server
(``HOOKBUS_DSN``, else the local one, else an embedded one) and dropped after.

    python benchmarks/transaction.py [--dsn DSN] [--rounds 30] [--batch 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable

import asyncpg
import hookbus_asyncpg
from hookbus_asyncpg.testing import run_with_database

import hookbus

INSERTS = 3


class Noop(hookbus.Operation):
    """An operation with a precommit and a postcommit that do nothing."""

    async def precommit(self) -> None:
        pass

    async def postcommit(self) -> None:
        pass


async def bare(pool: asyncpg.Pool, n: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        for i in range(INSERTS):
            await conn.execute("INSERT INTO hookbus_bench VALUES ($1)", i)


def hooked(accumulate: bool, find: bool) -> Callable[[asyncpg.Pool, int], Awaitable[None]]:
    async def run(pool: asyncpg.Pool, n: int) -> None:
        async with hookbus_asyncpg.transaction(pool, find_outcome=find) as tx:
            conn = tx.connection
            for i in range(INSERTS):
                await conn.execute("INSERT INTO hookbus_bench VALUES ($1)", i)
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
    args = parser.parse_args()
    run_with_database(lambda dsn: measure(dsn, args), "bench_transaction", dsn=args.dsn)


async def measure(dsn: str, args: argparse.Namespace) -> None:
    cases = [
        ("N = 0", 0, False, True, args.batch),
        ("N = 10", 10, False, True, args.batch),
        ("N = 1000", 1000, False, True, args.batch),
        ("accumulate 100,000", 100_000, True, True, max(1, args.batch // 10)),
        # without the transaction-id read that lets a lost COMMIT's outcome be found out
        ("N = 0, no find", 0, False, False, args.batch),
        ("N = 10, no find", 10, False, False, args.batch),
    ]
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        await pool.execute("CREATE UNLOGGED TABLE IF NOT EXISTS hookbus_bench (n int)")
        print(f"{'case':<20} {'bare ms':>9} {'hookbus ms':>11} {'ratio (median)':>15}")
        for label, n, accumulate, find, batch in cases:
            fn = hooked(accumulate, find)
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


if __name__ == "__main__":
    main()
