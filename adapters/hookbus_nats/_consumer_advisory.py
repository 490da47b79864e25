"""The server's MAX_DELIVERIES advisory: a message it will not deliver again.

A message whose every delivery ended without an outcome (the process died, or its hooks ran
past ``ack_wait`` each time) is dropped from the consumer once it reached ``max_deliver``;
the server only announces it, on ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.
<consumer>``. The consumer listens, and dead-letters such a message unless the inbox shows it
was applied (its acknowledgement was what got lost), so nothing leaves silently.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec

__all__ = ["MaxDeliveries", "max_deliveries_subject", "watch_max_deliveries"]

_SUBJECT: Final = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}"


class MaxDeliveries(msgspec.Struct, frozen=True):
    """The advisory's fields this consumer reads."""

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int


_decoder: Final = msgspec.json.Decoder(MaxDeliveries)


def max_deliveries_subject(stream: str, consumer: str) -> str:
    """The subject of the advisory for ``consumer`` of ``stream``."""
    return _SUBJECT.format(stream=stream, consumer=consumer)


async def watch_max_deliveries(
    nc: Any, stream: str, consumer: str, handle: Callable[[MaxDeliveries], Awaitable[None]]
) -> Any:
    """Subscribe ``handle`` to the advisory; return the subscription (to unsubscribe)."""

    async def received(msg: Any) -> None:
        try:
            advisory = _decoder.decode(msg.data)
        except msgspec.DecodeError:
            return  # not the advisory this code knows: nothing to act on
        await handle(advisory)

    return await nc.subscribe(max_deliveries_subject(stream, consumer), cb=received)
