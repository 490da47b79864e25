"""The server's MAX_DELIVERIES advisory: a message it will not deliver again.

A message whose every delivery ended without an outcome (the process died, or its hooks ran
past ``ack_wait`` each time) is dropped from the consumer once it reached ``max_deliver``;
the server only announces it, on ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.
<consumer>``. The consumer listens, and dead-letters such a message unless the inbox shows it
was applied (its acknowledgement was what got lost), so nothing leaves silently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec

from ._consumer_state import ConsumerError

__all__ = ["MaxDeliveries", "flushed", "max_deliveries_subject", "watch_max_deliveries"]

_SUBJECT: Final = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}"


class MaxDeliveries(msgspec.Struct, frozen=True):
    """The advisory's fields this consumer reads."""

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int


_decoder: Final = msgspec.json.Decoder(MaxDeliveries)


async def flushed(nc: Any) -> None:
    """Return once the server has read everything sent on ``nc`` so far and answered it.

    Two flushes: nats-py writes a flush's PING straight to the socket, while a SUB or UNSUB
    waits in its buffer for its flusher task, so the first PING may overtake them. That task
    runs before the first PONG can come back: the second PING follows them."""
    await nc.flush()
    await nc.flush()


def max_deliveries_subject(stream: str, consumer: str) -> str:
    """The subject of the advisory for ``consumer`` of ``stream``."""
    return _SUBJECT.format(stream=stream, consumer=consumer)


async def watch_max_deliveries(
    nc: Any, stream: str, consumer: str, handle: Callable[[MaxDeliveries], Awaitable[None]]
) -> Any:
    """Subscribe ``handle`` to the advisory; return the subscription (to unsubscribe).

    Raises ``ConsumerError`` if the server refuses the subscription (the connection's user
    may not subscribe to the subject): nats-py's ``subscribe`` returns before the server
    answers and reports a refusal only to the connection's error callback and
    ``last_error``, so the subscription is followed by flushes, the last answered by the
    server after its refusal of the SUB, if any."""

    async def received(msg: Any) -> None:
        try:
            advisory = _decoder.decode(msg.data)
        except msgspec.DecodeError:
            return  # not the advisory this code knows: nothing to act on
        await handle(advisory)

    subject = max_deliveries_subject(stream, consumer)
    before = nc.last_error
    sub = await nc.subscribe(subject, cb=received)
    try:
        # A connection away now cannot say: the subscription stands, and nats-py sends it
        # again once connected (a refusal then is the error callback's alone).
        with contextlib.suppress(Exception):
            await flushed(nc)
        refused = nc.last_error
        # nats-py reports the server's words in lower case
        if refused is not before and f'subscription to "{subject.lower()}"' in str(refused):
            raise ConsumerError(
                f"consumer {consumer!r}: the NATS server refused the subscription to "
                f"{subject} ({refused}): a message that reaches max_deliver would leave "
                "without a dead letter; allow the connection's user to subscribe to it"
            )
    except BaseException:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        raise
    return sub
