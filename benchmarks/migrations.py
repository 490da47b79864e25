"""Migration benchmark: a batched stage against a hand-written keyset loop and the OFFSET loop.

Three ways to set ``new_field`` and ``migrated`` on every row of a table, in batches of
1,000, one transaction a batch:

* ``stage``: a ``BatchedStage`` run by ``hookbus_asyncpg.Migrator`` (keyset pages, the batch
  recorded and the cursor saved in the batch's transaction, hookbus scopes);
* ``keyset``: the same SELECT of the batch's last key and the same UPDATE, by hand, in
  asyncpg transactions, nothing recorded (the floor; target: stage <= 1.1x keyset);
* ``offset``: the lesson's loop, ``WHERE migrated = FALSE ORDER BY id LIMIT n OFFSET k`` with
  one UPDATE per row, repeated (a "pass" is one run of the lesson's loop) until no row is
  left unmigrated: the filter shrinks under the growing offset, so each pass skips rows.

The figure is time per migrated row; the stage and keyset runs are interleaved round by
round, the order flipped every round, and the ratio quoted is the median of the rounds'.
A throwaway database is made on the server (``--dsn``, else the rule of ``HOOKBUS_DSN``)
and dropped after.

    python benchmarks/migrations.py [--dsn DSN] [--sizes 100000,1000000] [--rounds 3]
    python benchmarks/migrations.py --quick      # a smoke run: 10,000 rows, one round
    python benchmarks/migrations.py --sizes 1000000 --no-offset   # stage and keyset only
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable

import asyncpg
from hookbus_asyncpg import Migrator
from hookbus_asyncpg.testing import run_with_database

from hookbus import Batch, BatchedStage, Environment, Migration

BATCH = 1000
CREATE = """
DROP TABLE IF EXISTS hookbus_batch, hookbus_stage, hookbus_plugin, hookbus_error, hookbus_hook_run,
    bench_row;
CREATE TABLE bench_row (id bigint PRIMARY KEY, old1 text NOT NULL, old2 text NOT NULL,
                        new_field text, migrated boolean NOT NULL DEFAULT false);
"""
FILL = """
INSERT INTO bench_row (id, old1, old2) SELECT i, 'a' || i, 'b' || (i % 97)
FROM generate_series(1, $1) i
"""
LAST = (
    "SELECT max(id), count(*) FROM (SELECT id FROM bench_row WHERE id > $1 ORDER BY id LIMIT $2) b"
)
UPDATE = (
    "UPDATE bench_row SET new_field = old1 || '_' || old2, migrated = true "
    "WHERE id > $1 AND id <= $2"
)
OFFSET_PAGE = (
    "SELECT id, old1, old2 FROM bench_row WHERE migrated = FALSE ORDER BY id LIMIT $1 OFFSET $2"
)
ROW_UPDATE = "UPDATE bench_row SET new_field = $1, migrated = TRUE WHERE id = $2"


class _Quiet:
    def advance(self, rows: int) -> None: ...

    def close(self) -> None: ...


async def by_stage(pool: asyncpg.Pool) -> int:
    async def apply(batch: Batch) -> None:
        after = -1 if batch.after is None else batch.after
        await batch.tx.connection.execute(UPDATE, after, batch.last)

    migrator = Migrator(pool, Environment("test"), progress=lambda *_: _Quiet())
    await migrator.create_tables()
    stage = BatchedStage("fill", apply, table="bench_row", key="id", batch_size=BATCH)
    await migrator.run("bench", Migration("2.0", [stage]))
    return 1


async def by_keyset(pool: asyncpg.Pool) -> int:
    after = -1
    async with pool.acquire() as conn:
        while True:
            async with conn.transaction():
                last, count = await conn.fetchrow(LAST, after, BATCH)
                if count == 0:
                    return 1
                await conn.execute(UPDATE, after, last)
            after = last


async def by_offset(pool: asyncpg.Pool) -> int:
    """The lesson's loop, rerun until nothing is left: the number of passes."""
    passes = 0
    async with pool.acquire() as conn:
        while await conn.fetchval("SELECT count(*) FROM bench_row WHERE NOT migrated"):
            passes += 1
            offset = 0
            while True:
                async with conn.transaction():
                    rows = await conn.fetch(OFFSET_PAGE, BATCH, offset)
                    if not rows:
                        break
                    await conn.executemany(
                        ROW_UPDATE, [(f"{r['old1']}_{r['old2']}", r["id"]) for r in rows]
                    )
                offset += BATCH
    return passes


Case = Callable[[asyncpg.Pool], Awaitable[int]]


async def timed(pool: asyncpg.Pool, size: int, case: Case) -> tuple[float, int]:
    """Seconds per migrated row, and the passes the case needed; the table made afresh."""
    await pool.execute(CREATE)
    await pool.execute(FILL, size)
    await pool.execute("VACUUM ANALYZE bench_row")
    # Start each case with no dirty pages left by the fill: a checkpoint landing inside one
    # case and not the other moved the ratio by 0.4x between runs.
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await pool.execute("CHECKPOINT")
    started = time.perf_counter()
    passes = await case(pool)
    elapsed = time.perf_counter() - started
    left = await pool.fetchval("SELECT count(*) FROM bench_row WHERE NOT migrated")
    assert left == 0, f"{case.__name__} left {left} rows unmigrated"
    return elapsed / size, passes


async def run(dsn: str, sizes: list[int], rounds: int, offset_loop: bool = True) -> None:
    """``dsn`` names a throwaway database of the benchmark's own."""
    async with asyncpg.create_pool(dsn, min_size=2, max_size=4) as pool:
        print(f"{'rows':>9}  {'case':<7} {'us/row':>8}  {'passes':>6}  ratio to keyset")
        for size in sizes:
            stage: list[float] = []
            keyset: list[float] = []
            for round_ in range(rounds):
                pair = [(by_stage, stage), (by_keyset, keyset)]
                for case, into in pair if round_ % 2 == 0 else reversed(pair):
                    into.append((await timed(pool, size, case))[0])
            ratios = [s / k for s, k in zip(stage, keyset, strict=True)]
            ks = statistics.median(keyset)
            shown = [("keyset", ks, 1), ("stage", statistics.median(stage), 1)]
            if offset_loop:
                offset, passes = await timed(pool, size, by_offset)
                shown.append(("offset", offset, passes))
            for label, per_row, n in shown:
                ratio = statistics.median(ratios) if label == "stage" else per_row / ks
                print(f"{size:>9,}  {label:<7} {per_row * 1e6:>8.2f}  {n:>6}  {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dsn", help="the PostgreSQL server (default: HOOKBUS_DSN's rule)")
    parser.add_argument("--sizes", help="row counts, comma separated (default 100000,1000000)")
    parser.add_argument("--rounds", type=int, help="stage/keyset rounds per size (default 3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 10,000 rows, 1 round")
    parser.add_argument(
        "--no-offset", action="store_true",
        help="leave out the OFFSET loop (at 1,000,000 rows it runs for many minutes)",
    )  # fmt: skip
    args = parser.parse_args()
    sizes = args.sizes or ("10000" if args.quick else "100000,1000000")
    rounds = args.rounds or (1 if args.quick else 3)
    counts = [int(s) for s in sizes.split(",")]
    run_with_database(
        lambda dsn: run(dsn, counts, rounds, not args.no_offset), "bench_migrations", dsn=args.dsn
    )


if __name__ == "__main__":
    main()
