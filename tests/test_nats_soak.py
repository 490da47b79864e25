"""The soak: events applied exactly once while relay and consumer processes are SIGKILLed.

Small in CI; full size on demand (KILLS and AIMED are per kind of worker)::

    HOOKBUS_NATS_SOAK_EVENTS=100000 HOOKBUS_NATS_SOAK_KILLS=10 \\
        .venv/bin/python -m pytest -q -s tests/test_nats_soak.py

Two ``hookbus consume`` processes share one durable consumer. Events enter either straight
into JetStream (``nats``: only consumers are killed), or through the outbox (``outbox``: each
written with ``Outbox.publish`` in a transaction, and two ``hookbus outbox relay`` processes,
one active and one on standby, publish them). While the events are written, KILLS workers of
each kind, chosen at random, are killed by their pid and restarted.

Random kills seldom land in the two windows that exactly-once rests on, so ``AIMED`` kills
(``HOOKBUS_NATS_SOAK_AIMED``, default KILLS) of each kind land there (``_soak_faults``): a
consumer kills itself after a batch's COMMIT, before its acks (only the inbox keeps the
redelivery from being applied again), a relay after a batch is acknowledged, before its
cursor is saved (only ``Nats-Msg-Id`` keeps the re-send out of the stream). The events are
written in portions, a kill of each sort during each but the last. At the end every
event's counter in the projection is exactly 1, the stream holds each event once, and nothing
was dead-lettered.

On demand, against a three-server JetStream cluster on this machine (``_nats_cluster``: the
stream and the dead-letter stream replicated on the three), one server SIGKILLed by its pid
and restarted while the events are written (``HOOKBUS_NATS_SOAK_SERVER_KILLS`` times; the
workers connect to all three URLs)::

    HOOKBUS_NATS_SOAK_CLUSTER=1 HOOKBUS_NATS_SOAK_EVENTS=20000 \\
        .venv/bin/python -m pytest -q -s tests/test_nats_soak.py
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import secrets
import sys
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
from _soak_faults import FAULTS, arm, armed, taken
from hookbus_asyncpg import Outbox, outbox_plugin
from hookbus_nats import create_inbox, inbox_plugin, list_dead_letters

from hookbus import Bus, PluginSet

EVENTS = int(os.environ.get("HOOKBUS_NATS_SOAK_EVENTS", "3000"))
KILLS = int(os.environ.get("HOOKBUS_NATS_SOAK_KILLS", "2"))  # of each kind of worker
AIMED = int(os.environ.get("HOOKBUS_NATS_SOAK_AIMED", str(KILLS)))  # at a fault point, each kind
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
        await asyncio.gather(*(self._publish(order) for order in orders))

    async def _publish(self, order: int) -> None:
        """Publish as a relay does, again with the same message id while the stream cannot
        answer (on the cluster, its leader is being elected again after a server's kill;
        JetStream drops a copy that was stored): 30 s at most."""
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeoutError
        from nats.js.errors import NoStreamResponseError

        deadline = time.monotonic() + 30
        while True:
            try:
                await publish(self.stream.js, self.stream.subject(order % 16), "order_placed",
                              OrderPlaced(order, 1), msg_id=f"order-{order}")  # fmt: skip
                return
            except (NoRespondersError, NoStreamResponseError, NatsTimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)  # a leader election: nothing to await


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


async def _emit(source: Source, orders: range, chunk: int = 250) -> None:
    for start in range(orders.start, orders.stop, chunk):
        await source.emit(range(start, min(start + chunk, orders.stop)))
        await asyncio.sleep(0.02)  # spread the events over the kill


async def _produce_and_kill(source: Source, fleet: Fleet, faults: Path) -> None:
    """The events in portions, during each portion but the last a random kill (KILLS of each
    kind of worker, in random order) and a kill at a fault point (AIMED of each kind). The
    random kill lands 0.3-1.2 s into its portion; the aimed kill is armed before its portion,
    and the next portion waits until a worker took it."""
    kinds = sorted({w.kind for w in fleet.workers})
    randomly = [kind for kind in kinds for _ in range(KILLS)]
    aimed = [kind for kind in kinds for _ in range(AIMED)]
    fleet.rng.shuffle(randomly)
    fleet.rng.shuffle(aimed)
    plan = list(itertools.zip_longest(randomly, aimed))
    edges = [1 + EVENTS * i // (len(plan) + 1) for i in range(len(plan) + 2)]
    for i, (first, stop) in enumerate(itertools.pairwise(edges)):
        kill, arming = plan[i] if i < len(plan) else (None, None)
        if arming is not None:
            arm(faults, arming)
        emitting = asyncio.create_task(_emit(source, range(first, stop)))
        if kill is not None:
            await asyncio.sleep(fleet.rng.uniform(0.3, 1.2))
            await asyncio.to_thread(fleet.kill_one, kill)
        await emitting
        deadline = time.monotonic() + 120
        while arming is not None and armed(faults, arming):  # until a worker took it and died
            assert time.monotonic() < deadline, f"no {arming} reached its fault point in 120 s"
            await asyncio.to_thread(fleet.revive)
            await asyncio.sleep(0.02)
        await asyncio.to_thread(fleet.revive)


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
    faults = tmp_path / "faults"
    faults.mkdir()
    env = worker_env(dsn, HOOKBUS_TEST_PROJECTION=projection, **{FAULTS: str(faults)})
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
        # hookbus outbox relay, through the entry point that adds the relay's fault point
        relay = [sys.executable, str(Path(__file__).with_name("_soak_faults.py"))]
        relay += relay_command(nats_url, stream, name)[3:]
        workers += [
            Worker(relay, env, tmp_path / f"relay-{i}.log", ready_line="published", kind="relay")
            for i in range(RELAYS)
        ]
    for worker in workers:  # restarted after a kill at its fault point (or, in a cluster,
        worker.supervised = True  # a start while no leader answers)
        worker.faults = faults
    fleet = Fleet(workers)
    started = time.monotonic()
    fleet.start()
    try:
        producing = asyncio.create_task(_produce_and_kill(source, fleet, faults))
        if CLUSTER:
            await _kill_servers(request.getfixturevalue("cluster"), producing)
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
    stored = (await stream.js.stream_info(stream.name)).state.messages
    assert stored == EVENTS, f"the stream holds {stored} messages for {EVENTS} events"
    kinds = sorted({w.kind for w in workers})
    aimed = {kind: len(taken(faults, kind)) for kind in kinds}
    assert aimed == dict.fromkeys(kinds, AIMED)
    if not CLUSTER:  # a worker exits on its own only at its fault point
        assert fleet.crashes() == {k: [] for k in kinds}, fleet.crashes()
    if CLUSTER:
        fleet.kills["nats-server"] = request.getfixturevalue("cluster").kills
        for kind, why in fleet.crashes().items():  # e.g. a start while no leader answers
            if why:
                print(f"\n{kind} exited on its own {len(why)} time(s): {sorted(set(why))}")
    print(
        f"\nsoak through {through}{' (3-server cluster)' if CLUSTER else ''}: "
        f"{EVENTS} events, random kills {fleet.kills}, at a fault point {aimed}, "
        f"{time.monotonic() - started:.1f}s: each applied once, 0 dead-lettered"
    )
