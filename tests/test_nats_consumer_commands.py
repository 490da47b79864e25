"""``hookbus dead-letters list|replay`` and ``hookbus consume``'s SIGTERM, through the CLI."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from _nats_consumer import (  # noqa: F401
    Stream,
    nats_url_fixture,
    pending,
    publish,
    settled,
    stream_fixture,
)
from _nats_consumer_app import OrderPlaced
from _nats_consumer_fleet import Worker, consume_command, worker_env
from hookbus_nats import Consumer, create_inbox
from hookbus_nats._nats_options import connect_options, shown_servers

from hookbus import Bus, current_transaction
from hookbus.cli import main


@pytest_asyncio.fixture
async def projection(pool: asyncpg.Pool) -> AsyncIterator[str]:
    table = f"applied_{secrets.token_hex(4)}"
    await create_inbox(pool)
    await pool.execute(f"CREATE TABLE {table} (order_id int PRIMARY KEY, n int NOT NULL)")
    yield table
    await pool.execute(f"DROP TABLE {table}")


def _where(stream: Stream, nats_url: str) -> list[str]:
    return [
        "--server", nats_url,
        "--dead-letter-stream", stream.dead_stream,
        "--dead-letter-prefix", stream.dead_prefix,
    ]  # fmt: skip


async def _hookbus(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def test_dead_letters_are_listed_with_their_reason_and_replayed_by_the_command(
    pool: asyncpg.Pool,
    stream: Stream,
    nats_url: str,
    projection: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    class Version1(OrderPlaced, frozen=True):
        currency: str  # a required field the producer does not send yet

    def bus(payload: type) -> Bus:
        made = Bus()
        made.declare("order_placed", payload)

        @made.hook("order_placed")
        async def count(event: OrderPlaced) -> None:
            await current_transaction().connection.execute(  # type: ignore[attr-defined]
                f"INSERT INTO {projection} VALUES ($1, 1) "
                f"ON CONFLICT (order_id) DO UPDATE SET n = {projection}.n + 1",
                event.order_id,
            )

        return made

    name = f"c{secrets.token_hex(4)}"
    options = {
        "name": name,
        "stream": stream.name,
        "dead_letter_stream": stream.dead_stream,
        "dead_letter_prefix": stream.dead_prefix,
        "fetch_timeout": 0.5,
    }
    await publish(stream.js, stream.subject(1), "order_placed", OrderPlaced(1, 5), msg_id="m1")
    strict = Consumer(bus(Version1), pool, stream.nc, **options)  # type: ignore[arg-type]
    await strict.start()
    await strict.poll()
    assert strict.statistics().dead_lettered == 1

    assert (
        await _hookbus("dead-letters", "list", "--consumer", name, *_where(stream, nats_url)) == 0
    )
    listing = capsys.readouterr().out
    assert "incompatible" in listing and "Object missing required field `currency`" in listing
    assert (
        await _hookbus("dead-letters", "replay", "--consumer", name, *_where(stream, nats_url)) == 2
    )
    assert "name the dead letters to replay" in capsys.readouterr().err

    fixed = Consumer(bus(OrderPlaced), pool, stream.nc, **options)  # type: ignore[arg-type]
    await fixed.start()
    assert (
        await _hookbus(
            "dead-letters", "replay", "--all", "--consumer", name, *_where(stream, nats_url)
        )
        == 0
    )
    assert "replayed 1 to" in capsys.readouterr().out
    while await pending(stream.js, stream.name, name) != (0, 0):
        await fixed.poll()
    assert await pool.fetch(f"SELECT order_id, n FROM {projection}") == [(1, 1)]
    assert (
        await _hookbus("dead-letters", "list", "--consumer", name, *_where(stream, nats_url)) == 0
    )
    assert capsys.readouterr().out.strip() == "no dead letters"
    assert (
        await _hookbus(
            "dead-letters", "replay", "--all", "--consumer", name, *_where(stream, nats_url)
        )
        == 3
    )


async def test_sigterm_finishes_the_batch_in_hand_and_acknowledges_it(
    pool: asyncpg.Pool,
    dsn: str,
    stream: Stream,
    nats_url: str,
    projection: str,
    tmp_path: Path,
) -> None:
    for order in range(1, 201):
        await publish(stream.js, stream.subject(order), "order_placed", OrderPlaced(order, 1))
    name = f"c{secrets.token_hex(4)}"
    command = consume_command(
        "_nats_consumer_app:bus", nats_url, stream, name, "--batch", "50", "--ack-wait", "60"
    )
    app = f"hookbus-term-{secrets.token_hex(3)}"
    env = worker_env(
        f"{dsn}?application_name={app}",
        HOOKBUS_TEST_PROJECTION=projection,
        HOOKBUS_TEST_HOOK_DELAY="0.01",  # half a second a batch
    )
    worker = Worker(command, env, tmp_path / "consume.log")
    worker.start()
    open_tx = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
        "AND xact_start IS NOT NULL"
    )
    started = f"consume {name}: started"  # a SIGTERM before would end its start-up instead
    for _ in range(3000):
        if started in worker.output() and await pool.fetchval(open_tx, app):
            break
        await asyncio.sleep(0.01)
    os.kill(worker.pid, signal.SIGTERM)
    assert await asyncio.to_thread(worker.stop) == 0, worker.output()
    done = await pool.fetchval(f"SELECT count(*) FROM {projection}")
    assert done > 0 and done % 50 == 0  # whole batches, the one in hand included
    remaining, unacknowledged = await settled(stream.js, stream.name, name)
    assert (remaining, unacknowledged) == (200 - done, 0)
    assert f"consume {name}: applied {done}," in worker.output()


def test_nats_credentials_are_never_shown() -> None:
    import argparse

    args = argparse.Namespace(server="nats://alice:s3cret@a:4222,nats://tok3n@b:4222")
    options = connect_options(args, {"NATS_PASSWORD": "pw", "NATS_CREDS": "/run/my.creds"})
    assert (options["password"], options["user_credentials"]) == ("pw", "/run/my.creds")
    assert options["servers"] == ["nats://alice:s3cret@a:4222", "nats://tok3n@b:4222"]
    shown = shown_servers(options)
    assert shown == "nats://alice:***@a:4222,nats://***@b:4222"
    assert "s3cret" not in shown and "tok3n" not in shown
