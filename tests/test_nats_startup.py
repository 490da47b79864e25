"""Workers started while JetStream does not answer (a cluster electing a leader) wait for it.

The stand-in for a leaderless cluster is a NATS server on the workers' port without JetStream
(its API has no responders, as a stream without a leader), replaced by one with JetStream and
the stream's storage once the workers wait. What the server holds subscribed for a worker's
connection is read from its monitoring endpoint (``/connz?subs=1``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import subprocess
import urllib.request
from typing import Any

import anyio
import asyncpg
import pytest
import pytest_asyncio
from _nats import Stream, make_stream
from _nats_consumer_fleet import consume_command, hookbus_command, worker_env
from _nats_server import Server, connect, nats_fixture  # noqa: F401 (the fixture nats)
from _outbox import install_outbox, shop_bus
from hookbus_asyncpg import Outbox
from hookbus_nats import (
    Consumer,
    ConsumerError,
    ConsumerState,
    JetStreamNotReadyError,
    Relay,
    RelayState,
    create_inbox,
)
from hookbus_nats._consumer_advisory import flushed
from nats.errors import NoRespondersError
from test_relay_faults import publish, until


async def subscriptions(server: Server, nc: Any) -> list[str]:
    """The subjects ``server`` holds subscribed for ``nc``'s connection, sorted."""
    await flushed(nc)  # the server has read every SUB and UNSUB sent so far
    url = f"http://127.0.0.1:{server.monitor}/connz?subs=1&cid={nc.client_id}"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
    [connection] = json.loads(body)["connections"]
    return sorted(connection.get("subscriptions_list", []))


async def ready_for_requests(nc: Any) -> None:
    """Make nats-py's own reply subscription (shared by every request on ``nc``) now, so that
    it is part of the caller's state before a worker starts."""
    with contextlib.suppress(NoRespondersError):
        await nc.request("hookbus.test.nobody", b"", timeout=10)


@pytest_asyncio.fixture(autouse=True)
async def inbox(pool: asyncpg.Pool) -> None:
    """The consumers' inbox table, in the module's database (its plugin installed by hand)."""
    await create_inbox(pool)


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
        relay = Relay(dsn, nc, stream=stream, start_wait=120)
        consumer = Consumer(bus, pool, nc, name="startup", stream=stream, start_wait=120)
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
        relay = Relay(dsn, nc, stream=stream, start_wait=0.5)
        said = re.escape(f"no JetStream leader for stream {stream!r} after 0.5 s")
        with pytest.raises(JetStreamNotReadyError, match=said):
            await asyncio.wait_for(relay.run(), 30)
        assert relay.state is RelayState.FAILED
        consumer = Consumer(shop_bus(), pool, nc, name="startup", stream=stream, start_wait=0.5)
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


@pytest.mark.parametrize("worker", ["relay", "consumer"])
async def test_stop_ends_a_workers_wait_for_jetstream_at_once_with_nothing_left_bound(
    nats: Server, dsn: str, pool: asyncpg.Pool, worker: str
) -> None:
    stream = (await a_stream_then_no_jetstream(nats)).name
    nc, silent = await connect(nats.url), await connect(nats.url)
    try:
        # A responder that never answers: the worker's question stays unanswered, as a
        # stream's while its cluster elects a leader. Its arrival says the worker waits.
        asked = asyncio.Event()

        async def hear(msg: Any) -> None:
            asked.set()

        await silent.subscribe(f"$JS.API.STREAM.INFO.{stream}", cb=hear)
        await silent.flush()
        await ready_for_requests(nc)
        before = await subscriptions(nats, nc)
        js = nc.jetstream(timeout=600)  # the question alone outlasts the test
        running: Relay | Consumer
        if worker == "relay":
            running = Relay(dsn, nc, js=js, stream=stream, start_wait=600)
        else:
            running = Consumer(shop_bus(), pool, nc, js=js, name="stopped", stream=stream,
                               start_wait=600)  # fmt: skip
        task = asyncio.create_task(running.run())
        try:
            await asyncio.wait_for(asked.wait(), 60)
            running.stop()
            with anyio.fail_after(10):  # far under start_wait and the question's timeout
                await task
        finally:
            task.cancel()
        if isinstance(running, Relay):
            assert running.state is RelayState.STOPPED
        else:
            assert running.state is ConsumerState.STOPPED
        assert nc.is_connected
        assert await subscriptions(nats, nc) == before
    finally:
        await silent.close()
        await nc.close()


async def test_sigterm_ends_the_consume_commands_wait_for_jetstream_at_once(
    nats: Server, dsn: str
) -> None:
    stream = (await a_stream_then_no_jetstream(nats)).name

    class Named:
        name, dead_stream, dead_prefix = stream, "HOOKBUS_DEAD_START", "hookbus.dead.start"

    command = consume_command(
        "_nats_consumer_app:bus", nats.url, Named(), "startup", "--start-wait", "600"
    )
    env = worker_env(dsn, HOOKBUS_TEST_PROJECTION="unused")
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    said: list[str] = []
    try:
        waiting = f"no JetStream leader for stream {stream!r} yet"
        while not any(waiting in line for line in said):  # bounded by the wait_for below
            line = await asyncio.wait_for(process.stderr.readline(), 60)
            assert line, f"the command ended before it waited: {said}"
            said.append(line.decode())
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):  # far under --start-wait
            rest = await process.stderr.read()
            status = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    said.append(rest.decode())
    assert status == 0, "".join(said)
    assert "Traceback" not in "".join(said)
    assert "consume startup: started" not in "".join(said)


class GoesAwayBefore:
    """A worker's JetStream context that restarts the test's server without JetStream just
    before the first call of ``method`` on ``target``: the server's JetStream really becomes
    unavailable between two of the worker's start-up calls. Every call is passed on."""

    def __init__(self, js: Any, server: Server, method: str, target: str) -> None:
        self._js, self._server, self._method, self._target = js, server, method, target
        self.calls: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._js, name)
        if not name.endswith(("_info", "add_stream", "add_consumer")):
            return real

        async def call(*args: Any, **kwargs: Any) -> Any:
            target = kwargs.get("name") or args[0]
            if (name, target) == (self._method, self._target) and (name, target) not in self.calls:
                self._server.start(jetstream=False)
            self.calls.append((name, target))
            return await real(*args, **kwargs)

        return call


@pytest.mark.parametrize(
    ("method", "on"),
    [
        ("stream_info", "dead"),  # does the dead-letter stream exist?
        ("add_stream", "dead"),  # create it
        ("consumer_info", "stream"),  # does the durable consumer exist?
        ("add_consumer", "stream"),  # create it
    ],
)
async def test_a_later_start_up_call_without_answer_is_asked_again_and_binds_once(
    nats: Server, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture, method: str, on: str
) -> None:
    caplog.set_level(logging.WARNING)
    nats.start(jetstream=True)
    nc = await connect(nats.url)
    try:
        stream = (await make_stream(nc.jetstream())).name
        dead = f"{stream}_DEAD"
        before = await subscriptions(nats, nc)
        js = GoesAwayBefore(nc.jetstream(timeout=2), nats, method, dead if on == "dead" else stream)
        consumer = Consumer(shop_bus(), pool, nc, js=js, name="later", stream=stream,
                            dead_letter_stream=dead, dead_letter_prefix=f"{stream.lower()}dead",
                            start_wait=120)  # fmt: skip
        starting = asyncio.create_task(consumer.start())
        try:
            waiting = f"no JetStream leader for stream {stream!r} yet"
            await until(
                lambda: starting.done() or any(waiting in r.getMessage() for r in caplog.records),
                f"the consumer waits after {method} found no JetStream",
            )
            if starting.done():
                await starting  # what ended the start-up instead of a wait
            nats.start(jetstream=True)
            await asyncio.wait_for(starting, 60)
        finally:
            starting.cancel()
        assert consumer.state is ConsumerState.STARTED
        target = dead if on == "dead" else stream
        assert js.calls.count((method, target)) == 2, js.calls  # unanswered once, then again
        # Bound once: the pull subscription's inbox, the advisory's and the top-up's inbox,
        # nothing twice.
        made = [s for s in await subscriptions(nats, nc) if s not in before]
        advisory = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.later"
        assert sorted(made, key=lambda s: s != advisory)[0] == advisory, made
        assert len(made) == 3, made
    finally:
        await nc.close()


async def test_a_consumer_that_ran_and_stopped_leaves_no_subscription_behind(
    nats: Server, pool: asyncpg.Pool
) -> None:
    nats.start(jetstream=True)
    nc = await connect(nats.url)
    try:
        stream = (await make_stream(nc.jetstream())).name
        before = await subscriptions(nats, nc)
        consumer = Consumer(shop_bus(), pool, nc, name="ran", stream=stream,
                            dead_letter_stream=f"{stream}_DEAD",
                            dead_letter_prefix=f"{stream.lower()}dead",
                            fetch_timeout=0.2)  # fmt: skip
        await consumer.start()
        # the pull subscription's inbox, the advisory, the top-up's inbox
        assert len(await subscriptions(nats, nc)) == len(before) + 3
        running = asyncio.create_task(consumer.run())
        await until(lambda: consumer.state is ConsumerState.RUNNING, "the consumer runs")
        consumer.stop()
        await asyncio.wait_for(running, 30)
        assert consumer.state is ConsumerState.STOPPED
        assert await subscriptions(nats, nc) == before
    finally:
        await nc.close()


# A user who may do everything but subscribe to JetStream's advisories.
NO_ADVISORIES = """
authorization {
  users = [
    {user: worker, password: secret, permissions: {
      publish: {allow: [">"]},
      subscribe: {allow: [">"], deny: ["$JS.EVENT.ADVISORY.>"]}
    }}
  ]
}
"""


async def test_a_consumer_refused_the_advisory_fails_to_start_with_nothing_bound(
    nats: Server, pool: asyncpg.Pool
) -> None:
    # The server refuses the SUB after the pull subscription is bound; nats-py's subscribe
    # returns before the refusal comes, which goes to the connection's error callback.
    nats.start(jetstream=True, config=NO_ADVISORIES)
    reported: list[Exception] = []

    async def error_cb(exc: Exception) -> None:
        reported.append(exc)

    nc = await connect(nats.url.replace("//", "//worker:secret@"), error_cb=error_cb)
    try:
        stream = (await make_stream(nc.jetstream())).name
        before = await subscriptions(nats, nc)
        consumer = Consumer(shop_bus(), pool, nc, name="refused", stream=stream,
                            dead_letter_stream=f"{stream}_DEAD",
                            dead_letter_prefix=f"{stream.lower()}dead")  # fmt: skip
        advisory = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.refused"
        said = re.escape(f"consumer 'refused': the NATS server refused the subscription to "
                         f"{advisory} (nats: permissions violation")  # fmt: skip
        with pytest.raises(ConsumerError, match=said):
            await asyncio.wait_for(consumer.start(), 60)
        assert consumer.state is ConsumerState.FAILED
        assert nc.is_connected  # the caller's connection, as it was
        assert await subscriptions(nats, nc) == before  # the pull subscription unsubscribed
        assert [str(exc) for exc in reported] == [
            f'nats: permissions violation for subscription to "{advisory.lower()}"'
        ]
    finally:
        await nc.close()


async def test_the_consume_command_refused_the_advisory_exits_with_one_line(
    nats: Server, dsn: str
) -> None:
    nats.start(jetstream=True, config=NO_ADVISORIES)
    url = nats.url.replace("//", "//worker:secret@")
    nc = await connect(url)
    try:
        stream = (await make_stream(nc.jetstream())).name
    finally:
        await nc.close()

    class Named:
        name, dead_stream, dead_prefix = stream, f"{stream}_DEAD", f"{stream.lower()}dead"

    command = consume_command("_nats_consumer_app:bus", url, Named(), "refused")
    env = worker_env(dsn, HOOKBUS_TEST_PROJECTION="unused")
    done = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    [said] = [line for line in done.stderr.splitlines() if "refused the subscription" in line]
    assert "consume: consumer 'refused': the NATS server refused the subscription" in said
    assert "secret" not in done.stderr
