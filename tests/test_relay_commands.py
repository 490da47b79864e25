"""``hookbus outbox relay|status|cleanup``: the worker as an operator runs it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import hookbus_asyncpg
from _nats import Stream
from _outbox import OrderPlaced, bus_fixture, outbox_pool_fixture  # noqa: F401 (fixtures)
from hookbus_asyncpg import Outbox
from nats.js import JetStreamContext

from hookbus import Bus

SECRET = "s3cret-never-shown"


def with_password(dsn: str) -> str:
    """``dsn`` with a password (ignored by a trust-auth server), to check it is never shown."""
    parts = urlsplit(dsn)
    if not parts.netloc:  # a socket path: the password goes as a parameter
        return f"{dsn}&password={SECRET}" if "?" in dsn else f"{dsn}?password={SECRET}"
    user, _, host = parts.netloc.rpartition("@")
    netloc = f"{user.split(':')[0] or 'postgres'}:{SECRET}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def hookbus_env(dsn: str, **extra: str) -> dict[str, str]:
    return os.environ | {"HOOKBUS_DSN": with_password(dsn)} | extra


def hookbus(dsn: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hookbus", "outbox", *args],
        capture_output=True, text=True, env=hookbus_env(dsn, **extra), timeout=60,
    )  # fmt: skip


def start_relay(dsn: str, nats_url: str, stream: Stream) -> subprocess.Popen[str]:
    """``hookbus outbox relay`` in a process of its own, NATS named by the variables."""
    return subprocess.Popen(
        [sys.executable, "-m", "hookbus", "outbox", "relay", "--stream", stream.name,
         "--poll-interval", "0.05", "--stats-interval", "0.2"],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=hookbus_env(dsn, NATS_URL=nats_url, NATS_TOKEN=SECRET),
    )  # fmt: skip


async def publish(pool: asyncpg.Pool, outbox: Outbox, *orders: int) -> None:
    async with hookbus_asyncpg.transaction(pool) as tx:
        for order in orders:
            await outbox.publish(tx, "order_placed", OrderPlaced(order))


async def test_the_relay_command_stops_on_sigterm_with_its_cursor_saved(
    outbox_pool: asyncpg.Pool, dsn: str, bus: Bus, stream: Stream, jetstream: JetStreamContext,
    nats_url: str,
) -> None:  # fmt: skip
    outbox = Outbox(bus, subject_prefix=stream.prefix)
    await publish(outbox_pool, outbox, 1, 2, 3)
    process = start_relay(dsn, nats_url, stream)
    try:
        sub = await jetstream.pull_subscribe(f"{stream.prefix}.>", stream=stream.name)
        got = []
        while len(got) < 3:
            got += await sub.fetch(3 - len(got), timeout=60)
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(process.communicate, timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "published 3 (0 duplicates)" in err and "stopped" in err
    assert SECRET not in out + err
    last = await outbox_pool.fetchval("SELECT max(id) FROM hookbus_outbox")
    assert await outbox_pool.fetchval("SELECT id FROM hookbus_outbox_cursor") == last


async def test_status_shows_the_counters_and_cleanup_keeps_what_is_unpublished(
    outbox_pool: asyncpg.Pool, dsn: str, bus: Bus
) -> None:
    outbox = Outbox(bus)
    await publish(outbox_pool, outbox, 1, 2)
    # as if a relay had published the first row
    await outbox_pool.execute(
        "INSERT INTO hookbus_outbox_cursor (relay, xid, id, published) "
        "SELECT 'default', xid, id, 1 FROM hookbus_outbox ORDER BY id LIMIT 1"
    )
    shown = hookbus(dsn, "status")
    assert shown.returncode == 0, shown.stderr
    lines = dict(line.split(None, 1) for line in shown.stdout.replace("held back by", "held")
                 .replace("oldest pending", "oldest").replace("rows kept", "rows")
                 .replace("cursor moved", "moved").splitlines())  # fmt: skip
    assert lines["published"] == "1" and lines["pending"] == "1" and lines["rows"] == "2"
    assert lines["lag"] != "-" and lines["oldest"] != "-"
    as_json = json.loads(hookbus(dsn, "status", "--json").stdout)
    assert as_json["pending"] == 1 and as_json["published"] == 1
    cleaned = hookbus(dsn, "cleanup", "--retention", "0.001")
    assert cleaned.returncode == 0, cleaned.stderr
    assert "deleted 1 published row(s)" in cleaned.stdout
    assert await outbox_pool.fetchval("SELECT count(*) FROM hookbus_outbox") == 1
    assert SECRET not in shown.stdout + shown.stderr + cleaned.stdout + cleaned.stderr


async def test_status_without_an_outbox_says_so(pool: asyncpg.Pool, dsn: str) -> None:
    await pool.execute(
        "DROP TABLE IF EXISTS hookbus_outbox, hookbus_outbox_cursor, hookbus_outbox_mode CASCADE"
    )
    shown = hookbus(dsn, "status")
    assert shown.returncode == 3
    assert "install the hookbus_outbox plugin" in shown.stderr
