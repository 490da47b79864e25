"""The client's instructions per scope, store insert or row: callgrind counts on PostgreSQL.

On a shared 2-core machine the server's CPU competes with the client's and timings drift;
the client's instruction count does not. Each case runs a fixed amount of work on a real
PostgreSQL (a throwaway database: ``HOOKBUS_DSN``, else the local server, else an embedded
one) inside ``valgrind --tool=callgrind``, counting only while the case runs (the event
loop's ``run_until_complete`` called from ``itertools.starmap``: ``--toggle-collect`` on
``starmap_next``, as ``instructions.py`` does). The server is another process: it is not
counted. Cases, each beside the bare asyncpg code doing the same statements:

* ``concurrent``: 1,000 concurrent scopes on a pool of 20, one INSERT each through
  ``tx.connection`` (and with the transaction id returned by the INSERT), per scope;
* ``store``: ``store.insert`` one per transaction with three hooks, per insert (pool of 1);
* ``many``: ``store.insert_many`` of 20,000 rows with no hook, per row, against the eids
  and two bare COPYs;
* ``alone``: the scope's own work, with no server at all: 2,000 scopes, one INSERT each,
  on a pool and connection faked in memory (their calls return at once), against the same
  calls made bare on the fake (acquire, BEGIN, the INSERT, COMMIT, release).

    .venv/bin/python benchmarks/client_instructions.py [--part concurrent|store|many|alone] [REF]
    .venv/bin/python benchmarks/client_instructions.py --profile   # ``alone`` under cProfile

With ``REF`` (a git revision) its tree is counted too, imported in place of this one.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from itertools import starmap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

CONCURRENT, POOL = 1000, 20
SINGLE = 200  # store.insert, one per transaction
MANY = 20_000  # rows of insert_many
ONE = "INSERT INTO hookbus_bench VALUES ($1)"
RETURNING = "INSERT INTO hookbus_bench VALUES ($1) RETURNING pg_current_xact_id()::text"
PARTS = ("concurrent", "store", "many", "alone")
ALONE = 2000

Case = tuple[str, Callable[[], Awaitable[object]], int]


async def build(dsn: str, parts: list[str]) -> tuple[list[Case], Callable[[], Awaitable[None]]]:
    """The cases of ``parts`` (name, work, units of work) and what closes their pools."""
    import asyncpg
    import hookbus_asyncpg

    import hookbus

    spec = importlib.util.spec_from_file_location("_store_bench", ROOT / "benchmarks" / "store.py")
    assert spec is not None and spec.loader is not None
    store_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(store_bench)

    cases: list[Case] = []
    pools: list[Any] = []
    if "concurrent" in parts:
        pool = await asyncpg.create_pool(dsn, min_size=POOL, max_size=POOL)
        pools.append(pool)
        await pool.execute("CREATE UNLOGGED TABLE IF NOT EXISTS hookbus_bench (n int)")

        async def bare_one(i: int) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(ONE, i)

        async def hooked_one(i: int) -> None:
            async with hookbus_asyncpg.transaction(pool) as tx:
                await tx.connection.execute(ONE, i)

        async def hooked_returning(i: int) -> None:
            async with hookbus_asyncpg.transaction(pool) as tx:
                tx.note_transaction_id(await tx.connection.fetchval(RETURNING, i))

        async def bare_returning(i: int) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await conn.fetchval(RETURNING, i)

        def wave(one: Callable[[int], Awaitable[None]]) -> Callable[[], Awaitable[object]]:
            async def run() -> None:
                await asyncio.gather(*(one(i) for i in range(CONCURRENT)))

            return run

        cases += [
            ("concurrent: hookbus", wave(hooked_one), CONCURRENT),
            ("concurrent: bare", wave(bare_one), CONCURRENT),
            ("concurrent RETURNING xid: hookbus", wave(hooked_returning), CONCURRENT),
            ("concurrent RETURNING xid: bare", wave(bare_returning), CONCURRENT),
        ]
    if "store" in parts or "many" in parts:
        pool1 = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        pools.append(pool1)
        store = store_bench.hooked_store()
        await store.create_tables(pool1)
        plain = hookbus_asyncpg.Store(hookbus.Bus(), store_bench.SCHEMA)
        named = {
            name: (store_fn, bare_fn)
            for name, store_fn, bare_fn, _ in store_bench.cases(pool1, store, plain, MANY)
        }
        if "store" in parts:
            hooked, bare = named["insert, 1 per transaction"]
            cases += [
                ("store.insert: hookbus", repeat(hooked, SINGLE), SINGLE),
                ("store.insert: bare", repeat(bare, SINGLE), SINGLE),
            ]
        if "many" in parts:
            hooked, bare = named["  same, no hooks"]
            cases += [("insert_many: hookbus", hooked, MANY), ("insert_many: bare", bare, MANY)]

    if "alone" in parts:
        fake = _fake_pool()

        async def alone_hooked() -> None:
            for i in range(ALONE):
                async with hookbus_asyncpg.transaction(fake) as tx:
                    await tx.connection.execute(ONE, i)

        async def alone_returning() -> None:
            for i in range(ALONE):
                async with hookbus_asyncpg.transaction(fake) as tx:
                    tx.note_transaction_id(await tx.connection.fetchval(RETURNING, i))

        async def alone_bare() -> None:
            for i in range(ALONE):
                conn = await fake.acquire()
                try:
                    await conn.execute("BEGIN")
                    await conn.execute(ONE, i)
                    await conn.execute("COMMIT")
                finally:
                    await fake.release(conn)

        cases += [
            ("alone: hookbus", alone_hooked, ALONE),
            ("alone RETURNING xid: hookbus", alone_returning, ALONE),
            ("alone: bare", alone_bare, ALONE),
        ]

    async def close() -> None:
        for pool in pools:
            await pool.close()

    return cases, close


def _fake_pool() -> Any:
    """A pool whose connection answers every call at once (no server, no I/O)."""
    import asyncpg

    class Connection:
        async def execute(self, query: str, *args: Any, **kwargs: Any) -> str:
            return "COMMIT" if "COMMIT" in query else "INSERT 0 1"

        async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> str:
            return "1234"

        def is_closed(self) -> bool:
            return False

        def is_in_transaction(self) -> bool:
            return True

        def get_server_pid(self) -> int:
            return 1

        def add_log_listener(self, callback: Any) -> None:
            pass

        def remove_log_listener(self, callback: Any) -> None:
            pass

    class Pool(asyncpg.Pool):  # type: ignore[misc]
        def __init__(self) -> None:  # none of asyncpg's: nothing to connect to
            self.connection = Connection()

        async def acquire(self, **kwargs: Any) -> Connection:
            return self.connection

        async def release(self, connection: Any, **kwargs: Any) -> None:
            return None

    return Pool()


def profile() -> None:
    """The ``alone`` case of hookbus under cProfile: where the scope's own time goes."""
    import cProfile
    import pstats

    loop = asyncio.new_event_loop()
    cases, _ = loop.run_until_complete(build("", ["alone"]))
    work = {name: fn for name, fn, _ in cases}["alone: hookbus"]
    loop.run_until_complete(work())
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(5):
        loop.run_until_complete(work())
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])  # type: ignore[attr-defined]
    print(f"own time per scope, {5 * ALONE} scopes, {total / (5 * ALONE) * 1e6:.1f} us in all")
    print(f"{'share':>6} {'calls/scope':>11}  function")
    for (path, line, name), (_, calls, own, *_rest) in rows[:15]:
        where = f"{Path(path).name}:{line}({name})" if line else name
        print(f"{own / total:>6.1%} {calls / (5 * ALONE):>11.2f}  {where}")


def repeat(fn: Callable[[], Awaitable[object]], n: int) -> Callable[[], Awaitable[object]]:
    async def run() -> None:
        for _ in range(n):
            await fn()

    return run


def child(dsn: str, parts: list[str]) -> None:
    """Under callgrind: build the cases, warm each up twice, then count each once."""
    loop = asyncio.new_event_loop()
    cases, close = loop.run_until_complete(build(dsn, parts))
    for _ in range(2):
        for _, work, _ in cases:
            loop.run_until_complete(work())
    for _, work, _ in cases:
        list(starmap(loop.run_until_complete, [(work(),)]))  # counted: one dump part each
    loop.run_until_complete(close())
    print(json.dumps([(name, units) for name, _, units in cases]))


def count(tree: Path, dsn: str, parts: list[str]) -> dict[str, float]:
    """Instructions per unit of each case, counted in a child process under callgrind."""
    with tempfile.TemporaryDirectory(prefix="hookbus-callgrind-") as folder:
        out = Path(folder) / "callgrind.out"
        command = [
            "valgrind", "--tool=callgrind", "--collect-atstart=no",
            "--toggle-collect=starmap_next", "--dump-after=starmap_next",
            f"--callgrind-out-file={out}", "--dump-instr=no", "--compress-strings=no",
            sys.executable, __file__, "--child", dsn, *(f"--part={p}" for p in parts),
        ]  # fmt: skip
        path = os.pathsep.join([str(tree), str(tree / "adapters")])
        env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": path}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        cases = json.loads(done.stdout.strip().splitlines()[-1])
        parts_out = sorted(Path(folder).glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:]))
        totals = [_total(p) for p in parts_out][::2]  # starmap_next runs twice per case
    if len(totals) != len(cases):
        raise SystemExit(f"{len(totals)} dump parts for {len(cases)} cases")
    return {name: total / units for (name, units), total in zip(cases, totals, strict=True)}


def _total(part: Path) -> int:
    found = re.search(r"^(?:totals|summary): (\d+)", part.read_text(), re.MULTILINE)
    assert found is not None, part
    return int(found.group(1))


def report(now: dict[str, float], before: dict[str, float] | None) -> str:
    lines = [f"{'case':<36} {'per unit':>10} {'/bare':>7}" + (" now/ref" if before else "")]
    for name, value in now.items():
        subject, _, side = name.rpartition(": ")
        bare = now.get(f"{subject}: bare")
        ratio = f"{value / bare:.3f}" if bare and side != "bare" else "-"
        line = f"{name:<36} {value:>10.0f} {ratio:>7}"
        if before and name in before:
            line += f" {value / before[name]:>7.3f}"
        lines.append(line)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("ref", nargs="?", help="a git revision to compare with")
    parser.add_argument("--part", choices=PARTS, action="append", help="(all)")
    parser.add_argument("--dsn", help="the PostgreSQL server (default: HOOKBUS_DSN's rule)")
    parser.add_argument("--child", metavar="DSN", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help="the alone case under cProfile")
    args = parser.parse_args()
    parts = args.part or list(PARTS)
    if args.profile:
        profile()
        return 0
    if args.child:
        child(args.child, parts)
        return 0
    if shutil.which("valgrind") is None:
        print("benchmarks/client_instructions.py: valgrind is not installed; nothing counted")
        return 0
    from hookbus_asyncpg.testing import run_with_database

    async def on(dsn: str) -> tuple[dict[str, float], dict[str, float] | None]:
        now = await asyncio.to_thread(count, ROOT, dsn, parts)
        if not args.ref:
            return now, None
        sys.path.insert(0, str(ROOT))
        from benchmarks.versus import extract

        with tempfile.TemporaryDirectory(prefix="hookbus-ref-") as folder:
            tree = extract(args.ref, Path(folder))
            return now, await asyncio.to_thread(count, tree, dsn, parts)

    now, before = run_with_database(on, "bench_client_instructions", dsn=args.dsn)
    print(f"client instructions per unit (callgrind), Python {sys.version.split()[0]}")
    print(report(now, before))
    return 0


if __name__ == "__main__":
    sys.exit(main())
