"""``hookbus consume`` as a real process: SIGKILLed inside a batch, restarted, SIGTERMed.

Every event is applied exactly once whatever the moment of the kill: the killed batch's
transaction never committed, its messages are redelivered after ``ack_wait``, and what had
committed is found in the inbox.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest_asyncio
from _nats_consumer import Stream, nats_url_fixture, pending, publish, stream_fixture  # noqa: F401
from _nats_consumer_app import OrderPlaced
from _nats_consumer_fleet import Worker, consume_command, worker_env
from hookbus_nats import create_inbox, list_dead_letters

EVENTS = 600
KILLS = 3
APP = "hookbus-kill-test"


@pytest_asyncio.fixture
async def projection(pool: asyncpg.Pool) -> AsyncIterator[str]:
    table = f"applied_{secrets.token_hex(4)}"
    await create_inbox(pool)
    await pool.execute(f"CREATE TABLE {table} (order_id int PRIMARY KEY, n int NOT NULL)")
    yield table
    await pool.execute(f"DROP TABLE {table}")


async def _in_a_batch(pool: asyncpg.Pool, table: str, app: str, after: int) -> int:
    """Until the worker has committed more than ``after`` rows and holds a transaction open
    right now; returns the rows committed."""
    open_tx = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = $1 AND xact_start IS NOT NULL"
    )
    for _ in range(3000):  # PostgreSQL offers nothing to await
        done: int = await pool.fetchval(f"SELECT count(*) FROM {table}")
        if done > after and await pool.fetchval(open_tx, app):
            return done
        await asyncio.sleep(0.01)
    raise AssertionError("the worker never held a batch open")


async def _until_applied(pool: asyncpg.Pool, table: str, stream: Stream, name: str) -> None:
    for _ in range(1500):
        done = await pool.fetchval(f"SELECT count(*) FROM {table}")
        if done == EVENTS and await pending(stream.js, stream.name, name) == (0, 0):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{done} of {EVENTS} applied")


async def test_a_consumer_killed_mid_batch_and_restarted_applies_every_event_once(
    pool: asyncpg.Pool,
    dsn: str,
    stream: Stream,
    nats_url: str,
    projection: str,
    tmp_path: Path,
) -> None:
    for order in range(1, EVENTS + 1):
        await publish(stream.js, stream.subject(order % 7), "order_placed", OrderPlaced(order, 1))
    name = f"c{secrets.token_hex(4)}"
    command = consume_command(
        "_nats_consumer_app:bus", nats_url, stream, name,
        "--batch", "50", "--ack-wait", "2", "--stats-every", "3600",
    )  # fmt: skip
    env = worker_env(
        f"{dsn}?application_name={APP}",
        HOOKBUS_TEST_PROJECTION=projection,
        HOOKBUS_TEST_HOOK_DELAY="0.002",
    )
    worker = Worker(command, env, tmp_path / "consume.log")
    worker.start()
    done = 0
    for _ in range(KILLS):  # each kill lands at another point of a batch
        done = await _in_a_batch(pool, projection, APP, done)
        worker.kill()
        worker.start()
    assert done < EVENTS
    await _until_applied(pool, projection, stream, name)
    assert worker.stop() == 0, worker.output()

    counts = await pool.fetch(f"SELECT n, count(*) FROM {projection} GROUP BY n")
    assert [tuple(r) for r in counts] == [(1, EVENTS)]
    finals = [x for x in worker.output().splitlines() if x.startswith(f"consume {name}: applied ")]
    assert finals, worker.output()
    last = finals[-1]
    assert "redelivered 0," not in last  # the killed batch came back to the restarted worker
    assert "dead_lettered 0," in last
    letters = list_dead_letters(
        stream.js, name, stream=stream.dead_stream, prefix=stream.dead_prefix
    )
    assert [d async for d in letters] == []
