"""A NATS JetStream to test consumers on, streams of each test's own, and the wire format.

Which NATS: the one ``hookbus_nats.testing.nats_server`` picks (``HOOKBUS_NATS_URL``, else the
local server at 127.0.0.1:4222, else a ``nats-server -js`` started for the session). Each test
gets a stream and a dead-letter stream of its own (``stream``), deleted after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import nats
import pytest
import pytest_asyncio
from hookbus_nats.testing import nats_server


@pytest.fixture(scope="session", name="nats_url")
def nats_url_fixture() -> Iterator[str]:
    """The URL of a NATS server with JetStream (``hookbus_nats.testing.nats_server``)."""
    with nats_server() as url:
        yield url


@dataclass
class Stream:
    """A stream of a test's own: its name, its subjects' prefix, its dead-letter stream."""

    nc: Any
    js: Any
    name: str
    prefix: str
    dead_stream: str
    dead_prefix: str

    def subject(self, key: object = "all") -> str:
        return f"{self.prefix}.{key}"


@pytest_asyncio.fixture(name="stream")
async def stream_fixture(nats_url: str) -> AsyncIterator[Stream]:
    """A fresh stream (subjects ``<prefix>.>``) and dead-letter stream, deleted after."""
    tag = secrets.token_hex(4)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    made = Stream(nc, js, f"T_{tag}", f"t{tag}", f"T_{tag}_DEAD", f"t{tag}dead")
    await js.add_stream(name=made.name, subjects=[f"{made.prefix}.>"], max_age=3600)
    try:
        yield made
    finally:
        for name in (made.name, made.dead_stream):
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
        await nc.close()


_encoder = msgspec.json.Encoder()


async def publish(
    js: Any,
    subject: str,
    event: str,
    payload: Any,
    *,
    msg_id: str | None = None,
    wire: str = "1",
    raw: bytes | None = None,
) -> str:
    """Publish as the outbox relay does: ``Nats-Msg-Id``, ``Hookbus-Event``, ``Hookbus-Wire``,
    data the ``msgspec.json`` of the payload (or ``raw`` bytes); return the message id."""
    msg_id = msg_id or secrets.token_hex(8)
    headers = {"Nats-Msg-Id": msg_id, "Hookbus-Event": event, "Hookbus-Wire": wire}
    data = raw if raw is not None else _encoder.encode(payload)
    await js.publish(subject, data, headers=headers)
    return msg_id


async def pending(
    js: Any, stream: str, consumer: str, *, missing: tuple[int, int] | None = None
) -> tuple[int, int]:
    """``(num_pending, num_ack_pending)`` of a durable consumer; ``missing`` if it does not
    exist yet (else the server's NotFoundError)."""
    from nats.js.errors import NotFoundError

    try:
        info = await js.consumer_info(stream, consumer)
    except NotFoundError:
        if missing is None:
            raise
        return missing
    return info.num_pending, info.num_ack_pending


async def settled(js: Any, stream: str, consumer: str) -> tuple[int, int]:
    """:func:`pending` once no acknowledgement is outstanding, or after 10 s: acks are
    fire-and-forget and the server handles them in its own time, offering nothing to await."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while True:
        value = await pending(js, stream, consumer)
        if value[1] == 0 or loop.time() > deadline:
            return value
        await asyncio.sleep(0.02)
