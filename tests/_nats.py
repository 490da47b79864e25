"""NATS JetStream for the tests: the server, a connection, and a stream of each test's own.

A test module uses the fixtures with ``pytest_plugins = ["_nats"]``.
The server is the one ``hookbus_nats.testing.nats_server`` picks: ``HOOKBUS_NATS_URL``, else
the local one at 127.0.0.1:4222, else a ``nats-server -js`` started for the session. Each
test's stream and subjects have unique names and the stream is deleted after the test.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import pytest
import pytest_asyncio
from hookbus_nats.testing import nats_server
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """The URL of the NATS server of the session."""
    with nats_server() as url:
        yield url


@pytest_asyncio.fixture
async def nats_client(nats_url: str) -> AsyncIterator[Client]:
    """A connection to the session's NATS server, closed after the test."""
    nc = await nats.connect(nats_url, max_reconnect_attempts=2)
    try:
        yield nc
    finally:
        await nc.close()


@pytest_asyncio.fixture
async def jetstream(nats_client: Client) -> JetStreamContext:
    """The JetStream context of ``nats_client``."""
    return nats_client.jetstream()


class Stream:
    """A stream of the test's own: ``name``, and ``prefix`` for its subjects (``prefix.>``)."""

    def __init__(self, js: JetStreamContext, name: str, prefix: str) -> None:
        self.js, self.name, self.prefix = js, name, prefix

    async def messages(self) -> list[Any]:
        """Every message stored in the stream, in order (JetStream's own sequence)."""
        info = await self.js.stream_info(self.name)
        return [
            await self.js.get_msg(self.name, seq)
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
            if info.state.messages
        ]


async def make_stream(
    js: JetStreamContext, *, duplicate_window: float = 120.0, **config: Any
) -> Stream:
    """Create a file-storage stream with unique name and subjects ``<prefix>.>``."""
    unique = uuid.uuid4().hex[:12]
    name, prefix = f"T{unique}", f"t{unique}"
    await js.add_stream(
        StreamConfig(
            name=name,
            subjects=[f"{prefix}.>"],
            storage=StorageType.FILE,
            duplicate_window=duplicate_window,
            **config,
        )
    )
    return Stream(js, name, prefix)


@pytest_asyncio.fixture
async def stream(jetstream: JetStreamContext) -> AsyncIterator[Stream]:
    """A stream of this test's own (2-minute duplicate window), deleted after the test."""
    made = await make_stream(jetstream)
    try:
        yield made
    finally:
        await jetstream.delete_stream(made.name)
