"""The top-up: what the server holds for a consumer right now, in one round trip.

When the batch fetched ahead waited for the previous one to be applied, what arrived meanwhile
joins it (one transaction rather than two). nats-py's ``fetch`` cannot ask for that alone: with
a short timeout it misses what the server is still sending once the timer fires (a loaded
machine), with a long one it lingers the whole timeout when nothing is there. So the top-up
asks JetStream itself with ``no_wait`` and no ``expires``: the server sends what it holds, up
to the batch, then ends the answer with a status (404 "No Messages", 408) unless the batch was
filled, at once. The wait is bounded only for a server that does not answer.

The request goes to the pull subscription's next-message subject (prefix and domain
included), which nats-py keeps private (``_nms``); where a later nats-py has none, the top-up
falls back to ``fetch`` with a short timeout (:data:`FALLBACK_WAIT`).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = ["FALLBACK_WAIT", "TopUp"]

#: The wait of the fallback top-up (``fetch``), where the next-message subject is unknown.
FALLBACK_WAIT: Final = 0.002

#: How long a top-up waits for a server that does not answer (it answers in one round trip).
ANSWER_BOUND: Final = 0.5


class TopUp:
    """Ask for what the server holds now for one pull consumer; answers on an inbox of its own.

    Messages of an answer that came after its bound (a server slow to answer) wait in the
    inbox and join the next top-up; any left when the consumer stops are redelivered by the
    server after ``ack_wait``, as for a fetch cancelled at stop.
    """

    __slots__ = ("_inbox", "_nc", "_next", "_queue", "_sub")

    def __init__(self, nc: Client, next_subject: str) -> None:
        self._nc = nc
        self._next = next_subject
        self._inbox = nc.new_inbox()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._sub: Any = None

    @classmethod
    async def bind(cls, nc: Client, pull_sub: Any) -> TopUp | None:
        """A top-up for ``pull_sub``, subscribed; None where nats-py does not say where its
        next-message requests go (the caller falls back to ``fetch``)."""
        next_subject = getattr(pull_sub, "_nms", None)
        if not isinstance(next_subject, str) or not next_subject:
            return None
        top_up = cls(nc, next_subject)
        top_up._sub = await nc.subscribe(top_up._inbox, cb=top_up._arrived)
        return top_up

    async def _arrived(self, msg: Any) -> None:
        self._queue.put_nowait(msg)

    async def take(self, most: int, bound: float = ANSWER_BOUND) -> list[Any]:
        """Up to ``most`` messages the server holds now (the late ones of an earlier answer
        first); waits for the server's answer, ``bound`` seconds at most."""
        msgs = self._late(most)
        if len(msgs) >= most:
            return msgs
        request = {"batch": most - len(msgs), "no_wait": True}
        await self._nc.publish(self._next, json.dumps(request).encode(), reply=self._inbox)
        deadline = time.monotonic() + bound
        while len(msgs) < most:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                msg = await asyncio.wait_for(self._queue.get(), left)
            except TimeoutError:
                break
            if _is_status(msg):  # the end of the answer: nothing more held
                break
            msgs.append(msg)
        return msgs

    def _late(self, most: int) -> list[Any]:
        """The messages already in the inbox (an earlier answer's, past its bound); statuses,
        which end earlier answers, are dropped."""
        msgs: list[Any] = []
        while len(msgs) < most and not self._queue.empty():
            msg = self._queue.get_nowait()
            if not _is_status(msg):
                msgs.append(msg)
        return msgs

    async def unsubscribe(self) -> None:
        """Unsubscribe the inbox, as a subscription is (what is left in it is redelivered
        after ``ack_wait``)."""
        if self._sub is not None:
            await self._sub.unsubscribe()


def _is_status(msg: Any) -> bool:
    """A JetStream status message (no data, a ``Status`` header), not a stream's message."""
    headers = msg.headers
    return not msg.data and bool(headers) and "Status" in headers
