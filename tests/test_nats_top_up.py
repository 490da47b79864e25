"""The consumer's top-up on a real JetStream: what the server holds now, in one answer.

It asks with ``no_wait`` and no ``expires``: the server answers at once, with what it holds
(up to the batch) and a status, so the top-up neither misses what is there on a loaded machine
nor lingers when nothing is.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from _nats_consumer import (  # noqa: F401
    Stream,
    nats_url_fixture,
    stream_fixture,
)
from hookbus_nats._consumer_top_up import TopUp


@pytest_asyncio.fixture
async def pull(stream: Stream) -> AsyncIterator[Any]:
    """A durable pull subscription on the test's stream (explicit acks)."""
    sub = await stream.js.pull_subscribe(stream.subject(">"), durable="c", stream=stream.name)
    yield sub
    await sub.unsubscribe()


async def published(stream: Stream, n: int) -> list[bytes]:
    payloads = [f"m{i}".encode() for i in range(n)]
    for payload in payloads:
        await stream.js.publish(stream.subject(), payload)
    return payloads


async def test_it_takes_what_the_server_holds_and_no_more_than_asked(
    stream: Stream, pull: Any
) -> None:
    top_up = await TopUp.bind(stream.nc, pull)
    assert top_up is not None  # this nats-py says where its requests go
    payloads = await published(stream, 5)
    first = await top_up.take(3)
    rest = await top_up.take(10)  # fewer held than asked: the server's status ends it
    assert [m.data for m in first + rest] == payloads
    for m in first + rest:
        await m.ack()
    await top_up.unsubscribe()


async def test_with_nothing_held_it_returns_at_the_servers_answer_not_at_its_bound(
    stream: Stream, pull: Any
) -> None:
    top_up = await TopUp.bind(stream.nc, pull)
    assert top_up is not None
    started = time.monotonic()
    assert await top_up.take(10, bound=30.0) == []
    assert time.monotonic() - started < 15.0  # the 404 came, not the bound
    await top_up.unsubscribe()


async def test_an_answer_past_its_bound_joins_the_next_top_up(stream: Stream, pull: Any) -> None:
    """Nothing delivered is dropped: messages that come after the bound wait in the inbox."""
    top_up = await TopUp.bind(stream.nc, pull)
    assert top_up is not None
    payloads = await published(stream, 3)
    assert await top_up.take(3, bound=0.0) == []  # gave up before the answer came
    late: list[Any] = []
    for _ in range(50):  # each later answer is a 404: the three are the first answer's
        late += await top_up.take(3 - len(late), bound=1.0)
        if len(late) == 3:
            break
    assert [m.data for m in late] == payloads
    await top_up.unsubscribe()


async def test_without_the_next_message_subject_there_is_no_top_up(stream: Stream) -> None:
    """A nats-py that keeps the subject elsewhere: the consumer falls back to fetch."""

    class Elsewhere:
        pass

    assert await TopUp.bind(stream.nc, Elsewhere()) is None
