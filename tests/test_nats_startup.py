"""Workers started while JetStream does not answer (a cluster electing a leader) wait for it.

The stand-in for a leaderless cluster is a NATS server on the workers' port without JetStream
(its API has no responders, as a stream without a leader), replaced by one with JetStream and
the stream's storage once the workers wait.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import asyncpg
import pytest
from _nats import Stream, make_stream
from _nats_consumer_fleet import consume_command, hookbus_command, worker_env
from _outbox import install_outbox, shop_bus
from hookbus_asyncpg import Outbox
from hookbus_nats import Consumer, ConsumerState, JetStreamNotReadyError, Relay, RelayState
from hookbus_nats.testing import server_binary
from test_relay_faults import connect, publish, until


class Server:
    """A ``nats-server`` of the test's own on a fixed port, started and killed by its pid."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.storage = tempfile.mkdtemp(prefix="hookbus-nats-start-")
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, jetstream: bool) -> None:
        self.kill()
        command = [server_binary(), "-a", "127.0.0.1", "-p", str(self.port)]
        if jetstream:
            command += ["-js", "-sd", self.storage]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def nats() -> Iterator[Server]:
    made = Server()
    try:
        yield made
    finally:
        made.kill()
        shutil.rmtree(made.storage, ignore_errors=True)


async def a_stream_then_no_jetstream(nats: Server) -> Stream:
    """Make a stream on the server, then restart it without JetStream."""
    nats.start(jetstream=True)
    nc = await connect(nats.url)
    try:
        made = await make_stream(nc.jetstream())
    finally:
        await nc.close()
    nats.start(jetstream=False)
    return made


async def test_a_relay_and_a_consumer_started_before_jetstream_answers_start_once_it_does(
    nats: Server, dsn: str, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    bus = shop_bus()
    await install_outbox(pool, bus)
    made = await a_stream_then_no_jetstream(nats)
    stream = made.name
    await publish(pool, Outbox(bus, subject_prefix=made.prefix), 1)
    nc = await connect(nats.url)
    try:
        js = nc.jetstream()
        relay = Relay(dsn, js, stream=stream, start_wait=120)
        consumer = Consumer(bus, pool, js, name="startup", stream=stream, start_wait=120)
        relaying = asyncio.create_task(relay.run())
        starting = asyncio.create_task(consumer.start())
        try:
            waiting = f"no JetStream leader for stream {stream!r} yet"
            await until(
                lambda: sum(waiting in r.getMessage() for r in caplog.records) >= 4,
                "both workers say what they wait for, more than once",
            )
            assert not relaying.done() and not starting.done()
            assert relay.state is RelayState.STARTING
            assert consumer.state is ConsumerState.NEW
            nats.start(jetstream=True)
            await asyncio.wait_for(starting, 60)
            assert consumer.state is ConsumerState.STARTED
            await until(lambda: relay.stats().published == 1, "the relay publishes")
        finally:
            relay.stop()
            await asyncio.wait_for(relaying, 30)
            starting.cancel()
    finally:
        await nc.close()


async def test_past_its_start_wait_a_worker_fails_with_the_error_that_says_why(
    nats: Server, dsn: str, pool: asyncpg.Pool
) -> None:
    stream = (await a_stream_then_no_jetstream(nats)).name
    nc = await connect(nats.url)
    try:
        js = nc.jetstream()
        relay = Relay(dsn, js, stream=stream, start_wait=0.5)
        said = re.escape(f"no JetStream leader for stream {stream!r} after 0.5 s")
        with pytest.raises(JetStreamNotReadyError, match=said):
            await asyncio.wait_for(relay.run(), 30)
        assert relay.state is RelayState.FAILED
        consumer = Consumer(shop_bus(), pool, js, name="startup", stream=stream, start_wait=0.5)
        with pytest.raises(JetStreamNotReadyError, match=r"after 0\.5 s"):
            await asyncio.wait_for(consumer.start(), 30)
        assert consumer.state is ConsumerState.FAILED
    finally:
        await nc.close()


@pytest.mark.parametrize("worker", ["relay", "consume"])
async def test_past_its_start_wait_a_worker_command_exits_with_one_line(
    nats: Server, dsn: str, worker: str
) -> None:
    stream = (await a_stream_then_no_jetstream(nats)).name
    if worker == "relay":
        command = hookbus_command(
            "outbox", "relay", "--stream", stream, "--server", nats.url, "--start-wait", "0.5"
        )
    else:

        class Named:
            name, dead_stream, dead_prefix = stream, "HOOKBUS_DEAD_START", "hookbus.dead.start"

        command = consume_command(
            "_nats_consumer_app:bus", nats.url, Named(), "startup", "--start-wait", "0.5"
        )
    env = worker_env(dsn, HOOKBUS_TEST_PROJECTION="unused")
    done = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "after 0.5 s" in line]
    assert len(errors) == 1, done.stderr
    assert f"no JetStream leader for stream {stream!r} after 0.5 s" in errors[0]
