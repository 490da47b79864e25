"""The soak: events applied exactly once while relay and consumer processes are SIGKILLed.

Small in CI; full size on demand (KILLS is per kind of worker)::

    HOOKBUS_NATS_SOAK_EVENTS=100000 HOOKBUS_NATS_SOAK_KILLS=10 \\
        .venv/bin/python -m pytest -q -s tests/test_nats_soak.py

Two ``hookbus consume`` processes share one durable consumer. Events enter either straight
into JetStream (``nats``: only consumers are killed), or through the outbox (``outbox``: each
written with ``Outbox.publish`` in a transaction, and two ``hookbus outbox relay`` processes,
one active and one on standby, publish them). A worker is killed by its pid every 0.3-1.2 s
and restarted, a consumer and a relay in turn, while the events are written. At the end every
event's counter in the projection is exactly 1, and nothing was dead-lettered.

On demand, against a three-server JetStream cluster on this machine (``_nats_cluster``: the
stream and the dead-letter stream replicated on the three), one server SIGKILLed by its pid
and restarted while the events are written (``HOOKBUS_NATS_SOAK_SERVER_KILLS`` times; the
workers connect to all three URLs)::

    HOOKBUS_NATS_SOAK_CLUSTER=1 HOOKBUS_NATS_SOAK_EVENTS=20000 \\
        .venv/bin/python -m pytest -q -s tests/test_nats_soak.py
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import asyncpg
import hookbus_asyncpg
import pytest
import pytest_asyncio
from _nats_consumer import Stream, pending, publish
from _nats_consumer_app import OrderPlaced
from _nats_consumer_fleet import Fleet, Worker, consume_command, relay_command, worker_env
from hookbus_asyncpg import Outbox, outbox_plugin
from hookbus_nats import create_inbox, inbox_plugin, list_dead_letters

from hookbus import Bus, PluginSet

EVENTS = int(os.environ.get("HOOKBUS_NATS_SOAK_EVENTS", "3000"))
KILLS = int(os.environ.get("HOOKBUS_NATS_SOAK_KILLS", "3"))  # of each kind of worker
CONSUMERS = RELAYS = 2
CLUSTER = os.environ.get("HOOKBUS_NATS_SOAK_CLUSTER") == "1"
SERVER_KILLS = int(os.environ.get("HOOKBUS_NATS_SOAK_SERVER_KILLS", "1"))  # with CLUSTER

if CLUSTER:  # the same fixture names: a three-server cluster and replicated streams
    from _nats_cluster import (  # noqa: F401
        NatsCluster,
        cluster_fixture,
        cluster_stream_fixture,
        cluster_url_fixture,
    )
else:
    from _nats_consumer import nats_url_fixture, stream_fixture  # noqa: F401


class Source(Protocol):
    """Where the soak's events enter: straight into JetStream, or (with a relay) the outbox."""

    async def emit(self, orders: range) -> None: ...


class NatsSource:
    """Events published to the stream as the relay would publish them."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    async def emit(self, orders: range) -> None:
        await asyncio.gather(
            *(
                publish(self.stream.js, self.stream.subject(order % 16), "order_placed",
                        OrderPlaced(order, 1), msg_id=f"order-{order}")
                for order in orders
            )
        )  # fmt: skip


class OutboxSource:
    """Events written to the outbox, 50 to a transaction, for the relays to publish."""

    def __init__(self, pool: asyncpg.Pool, prefix: str) -> None:
        self.pool = pool
        bus = Bus()
        bus.declare("order_placed", OrderPlaced)
        self.outbox = Outbox(bus, subject_prefix=prefix)

    async def emit(self, orders: range) -> None:
        for first in range(orders.start, orders.stop, 50):
            async with hookbus_asyncpg.transaction(self.pool) as tx:
                for order in range(first, min(first + 50, orders.stop)):
                    await self.outbox.publish(
                        tx, "order_placed", OrderPlaced(order, 1), key=str(order % 16)
                    )


@pytest_asyncio.fixture
async def projection(pool: asyncpg.Pool) -> AsyncIterator[str]:
    table = f"soak_{secrets.token_hex(4)}"
    await create_inbox(pool)
    await pool.execute(f"CREATE TABLE {table} (order_id int PRIMARY KEY, n int NOT NULL)")
    yield table
    await pool.execute(f"DROP TABLE {table}")


async def _produce(source: Source, events: int, chunk: int = 250) -> None:
    for start in range(1, events + 1, chunk):
        await source.emit(range(start, min(start + chunk, events + 1)))
        await asyncio.sleep(0.02)  # spread the events over the kills


async def _kill_while(fleet: Fleet, producing: asyncio.Task[None]) -> None:
    kinds = {w.kind for w in fleet.workers}
    while min(fleet.kills.get(k, 0) for k in kinds) < KILLS or not producing.done():
        await asyncio.sleep(fleet.rng.uniform(0.3, 1.2))
        await asyncio.to_thread(fleet.revive)
        await asyncio.to_thread(fleet.kill_one)


async def _kill_servers(cluster: NatsCluster, producing: asyncio.Task[None]) -> None:
    """SIGKILL a server by its pid, restart it 2-4 s later: SERVER_KILLS times, spread over
    the writing of the events."""
    rng = random.Random(os.environ.get("HOOKBUS_SEED"))
    for _ in range(SERVER_KILLS):
        await asyncio.sleep(rng.uniform(1.0, 3.0))
        victim = rng.randrange(len(cluster.processes))
        await asyncio.to_thread(cluster.kill, victim)
        await asyncio.sleep(rng.uniform(2.0, 4.0))
        await asyncio.to_thread(cluster.start, victim)
        if producing.done():
            break


@pytest.mark.parametrize("through", ["nats", "outbox"])
async def test_events_are_applied_exactly_once_while_workers_are_killed(
    through: str,
    pool: asyncpg.Pool,
    dsn: str,
    stream: Stream,
    nats_url: str,
    projection: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    name = f"soak{secrets.token_hex(4)}"
    env = worker_env(dsn, HOOKBUS_TEST_PROJECTION=projection)
    command = consume_command(
        "_nats_consumer_app:bus", nats_url, stream, name,
        "--batch", "200", "--ack-wait", "3", "--stats-every", "3600",
    )  # fmt: skip
    workers = [Worker(command, env, tmp_path / f"consume-{i}.log") for i in range(CONSUMERS)]
    source: Source = NatsSource(stream)
    if through == "outbox":
        plugins = PluginSet(Bus(), [outbox_plugin(), inbox_plugin()])
        await hookbus_asyncpg.PluginManager(pool, plugins).install()
        source = OutboxSource(pool, stream.prefix)
        relay = relay_command(nats_url, stream, name)
        workers += [
            Worker(relay, env, tmp_path / f"relay-{i}.log", ready_line="published", kind="relay")
            for i in range(RELAYS)
        ]
    for worker in workers:  # a worker that starts while the cluster elects a leader may fail
        worker.supervised = CLUSTER
    fleet = Fleet(workers)
    started = time.monotonic()
    fleet.start()
    try:
        producing = asyncio.create_task(_produce(source, EVENTS))
        killing = [_kill_while(fleet, producing)]
        if CLUSTER:
            killing.append(_kill_servers(request.getfixturevalue("cluster"), producing))
        await asyncio.gather(*killing)
        await producing
        deadline = time.monotonic() + 120 + EVENTS / 500
        while True:
            done = await pool.fetchval(f"SELECT count(*) FROM {projection}")
            left = await pending(stream.js, stream.name, name, missing=(EVENTS, 0))
            if done == EVENTS and left == (0, 0):
                break
            assert time.monotonic() < deadline, f"{done} of {EVENTS} applied, {left} pending"
            await asyncio.to_thread(fleet.revive)
            await asyncio.sleep(0.1)
    finally:
        statuses = await asyncio.to_thread(fleet.stop)
    assert statuses == [0] * len(workers), [w.output() for w in fleet.workers]
    counts = await pool.fetch(f"SELECT n, count(*) FROM {projection} GROUP BY n")
    assert [tuple(r) for r in counts] == [(1, EVENTS)]
    letters = list_dead_letters(
        stream.js, name, stream=stream.dead_stream, prefix=stream.dead_prefix
    )
    assert [d async for d in letters] == []
    if CLUSTER:
        fleet.kills["nats-server"] = request.getfixturevalue("cluster").kills
        for kind, why in fleet.crashes().items():  # e.g. a start while no leader answers
            if why:
                print(f"\n{kind} exited on its own {len(why)} time(s): {sorted(set(why))}")
    print(
        f"\nsoak through {through}{' (3-server cluster)' if CLUSTER else ''}: "
        f"{EVENTS} events, kills {fleet.kills}, "
        f"{time.monotonic() - started:.1f}s: each applied once, 0 dead-lettered"
    )
