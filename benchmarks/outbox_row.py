"""The parts of an outbox row's cost, on raw asyncpg: what a one-row transaction pays for it.

Each side is one transaction on one connection, ``BEGIN``, ``INSERT INTO bench_rows``, then
its end, sent as hookbus sends it; one transaction of each side in turn, the order rotating
every round, so that a change of the machine's load falls on all alike. The figures are the
medians of the per-round ratios to ``plain``:

- ``plain``: COMMIT with the carrier of the transaction's id (``SAVEPOINT; SET LOCAL; DO``
  raising a NOTICE; COMMIT), as a scope whose write was plain SQL sends it;
- ``plain_known``: a plain COMMIT (the id known, as after the store's inserts);
- ``own_insert``: the row written with a round trip of its own (a prepared INSERT returning
  the id), then a plain COMMIT: how ``Outbox.publish`` wrote it before;
- ``with_commit``: the row's INSERT (literals) and NOTIFY in COMMIT's message, before the
  carrier: how ``Outbox.publish`` writes it now;
- ``with_commit_no_notify``: the same without the NOTIFY;
- ``with_commit_known``: the row's INSERT and NOTIFY, then a plain COMMIT (the id known);
- ``function``: the row written by a plpgsql function (its plan cached by the session) that
  also sends the NOTIFY and raises the id's NOTICE, in COMMIT's message, with no carrier: a
  way that needs a function of the outbox's own (not in the outbox's layout);
- ``trivial_known``: a second INSERT of one integer into the transaction's own table, in
  COMMIT's message, then a plain COMMIT: what a second statement costs as such;
- ``heap_known``: the outbox's row (the same literals) into a table of the same columns with
  no index, no default and no NOTIFY, then a plain COMMIT: what the row's bytes cost.

A second column of ratios is to ``plain_known``: the sides whose COMMIT is plain against the
same transaction without the row, which isolates the row's own cost from the carrier's.

    python benchmarks/outbox_row.py [--rounds 40] [--batch 50] [--dsn DSN]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
from hookbus_asyncpg._outbox._outbox_table import OUTBOX_DDL, OUTBOX_DDL_1_1
from hookbus_asyncpg.testing import run_with_database

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the benchmarks' shared timing
    sys.path.insert(0, str(ROOT))

from benchmarks._timing import interleaved  # noqa: E402

PAYLOAD = b'{"n":1,"text":"' + b"x" * 239 + b'"}'  # 256 bytes
CARRIER = (
    "SAVEPOINT hookbus_xid; SET LOCAL client_min_messages = notice; "
    "DO $$BEGIN RAISE NOTICE 'hookbus xid 0 %', pg_current_xact_id_if_assigned(); END$$; "
    "COMMIT"
)
OWN_INSERT = (
    "WITH row AS (INSERT INTO hookbus_outbox (subject, event, payload, headers, ordering_key) "
    "VALUES ($1, $2, $3, '{}', NULL) RETURNING xid) "
    "SELECT xid::text FROM row, pg_notify('hookbus_outbox', '')"
)
FUNCTION = """\
CREATE FUNCTION bench_outbox_row(msg_id text, subject text, event text, payload bytea,
    headers jsonb, ordering_key text, nonce text) RETURNS void
LANGUAGE plpgsql SET client_min_messages = notice AS $f$
BEGIN
    INSERT INTO hookbus_outbox (msg_id, subject, event, payload, headers, ordering_key)
    VALUES (msg_id, subject, event, payload, headers, ordering_key);
    PERFORM pg_notify('hookbus_outbox', '');
    RAISE NOTICE '%', nonce || pg_current_xact_id()::text;
END $f$"""


def row() -> str:
    return (
        f"('{uuid.uuid4()}', E'bench.bench_event', E'bench_event', "
        f"E'\\\\x{PAYLOAD.hex()}'::bytea, E'{{}}'::jsonb, NULL)"
    )


def insert(notify: bool = True) -> str:
    return (
        "INSERT INTO hookbus_outbox (msg_id, subject, event, payload, headers, ordering_key) "
        f"VALUES {row()};" + (" NOTIFY hookbus_outbox;" if notify else "")
    )


async def measure(dsn: str, rounds: int, batch: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(OUTBOX_DDL)
        await conn.execute(OUTBOX_DDL_1_1)
        await conn.execute("CREATE TABLE bench_rows (n int)")
        await conn.execute(
            "CREATE TABLE bench_heap (msg_id text, subject text, event text, payload bytea, "
            "headers jsonb, ordering_key text)"
        )
        await conn.execute(FUNCTION)
        conn.add_log_listener(lambda *_: None)

        async def begun() -> None:
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO bench_rows VALUES (1)")

        async def plain() -> None:
            await begun()
            await conn.execute(CARRIER)

        async def plain_known() -> None:
            await begun()
            await conn.execute("COMMIT")

        async def own_insert() -> None:
            await begun()
            await conn.fetchval(OWN_INSERT, "bench.bench_event", "bench_event", PAYLOAD)
            await conn.execute("COMMIT")

        async def with_commit() -> None:
            await begun()
            await conn.execute(insert() + CARRIER)

        async def with_commit_no_notify() -> None:
            await begun()
            await conn.execute(insert(notify=False) + CARRIER)

        async def with_commit_known() -> None:
            await begun()
            await conn.execute(insert() + "COMMIT")

        async def trivial_known() -> None:
            await begun()
            await conn.execute("INSERT INTO bench_rows VALUES (2); COMMIT")

        async def heap_known() -> None:
            await begun()
            await conn.execute(
                insert(notify=False).replace("hookbus_outbox", "bench_heap") + "COMMIT"
            )

        async def function() -> None:
            await begun()
            await conn.execute(f"SELECT bench_outbox_row{row()[:-1]}, E'hookbus xid 0 '); COMMIT")

        sides: dict[str, Callable[[], Awaitable[None]]] = {
            f.__name__: f
            for f in (
                plain,
                plain_known,
                own_insert,
                with_commit,
                with_commit_no_notify,
                with_commit_known,
                function,
                trivial_known,
                heap_known,
            )
        }
        times = await interleaved(sides, rounds, batch)
    finally:
        await conn.close()
    print(f"{'side':22} {'median':>9}  {'/plain':>7}  {'/plain_known':>12}")
    for name in times:
        ratios = [t / p for t, p in zip(times[name], times["plain"], strict=True)]
        known = [t / p for t, p in zip(times[name], times["plain_known"], strict=True)]
        print(
            f"{name:22} {statistics.median(times[name]) * 1e3:.3f} ms  "
            f"{statistics.median(ratios):.3f}x  {statistics.median(known):11.3f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="the PostgreSQL server (default: HOOKBUS_DSN's rule)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    run_with_database(
        lambda dsn: measure(dsn, args.rounds, args.batch), "bench_outbox_row", dsn=args.dsn
    )


if __name__ == "__main__":
    main()
