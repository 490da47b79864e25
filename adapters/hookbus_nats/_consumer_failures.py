"""What becomes of the messages a consumer cannot apply: retried later, or dead letters.

One object per consumer owns these decisions: a message whose hooks failed is negatively
acknowledged with the delay of its delivery (``backoff``) or, at ``max_deliver``, stored as a
dead letter and terminated; a message that cannot be decoded is dead-lettered at once; one the
server gave up on (the MAX_DELIVERIES advisory) is dead-lettered unless the inbox holds it.
"""

from __future__ import annotations

import logging
from typing import Any, Final, final

from ._consumer_advisory import MaxDeliveries
from ._consumer_decode import Decoded, EventDecoder
from ._consumer_state import Counters
from ._dead_letters import DeadLetter, DeadReason, headers_of, now, publish_dead_letter
from ._inbox import is_applied

__all__ = ["Failures"]

logger: Final = logging.getLogger("hookbus.nats")


@final
class Failures:
    """The retries and dead letters of the consumer ``name`` of ``stream``."""

    __slots__ = (
        "backoff",
        "counters",
        "decoder",
        "js",
        "max_deliver",
        "name",
        "pool",
        "prefix",
        "stream",
    )

    def __init__(
        self,
        name: str,
        stream: str,
        js: Any,
        pool: Any,
        decoder: EventDecoder,
        counters: Counters,
        *,
        backoff: tuple[float, ...],
        max_deliver: int,
        prefix: str,
    ) -> None:
        self.name: Final = name
        self.stream: Final = stream
        self.js: Final = js
        self.pool: Final = pool
        self.decoder: Final = decoder
        self.counters: Final = counters
        self.backoff: Final = backoff
        self.max_deliver: Final = max_deliver
        self.prefix: Final = prefix

    async def failed(self, item: tuple[Any, Decoded], exc: BaseException) -> None:
        """Hooks failed for this message alone: retry it later, or dead-letter it at the end."""
        msg, event = item
        delivered = msg.metadata.num_delivered
        if delivered >= self.max_deliver:
            detail = f"{event.event}: {type(exc).__name__}: {exc} (delivery {delivered})"
            await self.dead_letter(msg, DeadReason.HANDLER_FAILED, detail, event=event)
            return
        delay = self.backoff[min(delivered, len(self.backoff)) - 1]
        logger.warning(
            "consumer %s: %s (%s) failed on delivery %d, retried in %.1fs: %r",
            self.name,
            event.event,
            event.msg_id,
            delivered,
            delay,
            exc,
        )
        try:
            await msg.nak(delay=delay)
        except Exception as exc:  # the server redelivers after ack_wait anyway
            logger.warning("consumer %s: nak lost (%r)", self.name, exc)
        self.counters.retried += 1

    async def dead_letter(
        self, msg: Any, reason: DeadReason, detail: str, *, event: Decoded | None = None
    ) -> None:
        """Store the message as a dead letter with its reason, then terminate it."""
        headers = headers_of(msg.headers)
        meta = msg.metadata
        letter = DeadLetter(
            consumer=self.name,
            reason=reason,
            detail=detail,
            subject=msg.subject,
            stream=meta.stream,
            stream_seq=meta.sequence.stream,
            deliveries=meta.num_delivered,
            msg_id=event.msg_id if event else self.decoder.msg_id(headers),
            event=event.event if event else headers.get("Hookbus-Event"),
            headers=headers,
            data=msg.data,
            failed_at=now(),
        )
        try:
            await publish_dead_letter(self.js, letter, prefix=self.prefix)
        except Exception as exc:  # not stored: the message stays, redelivered after ack_wait
            logger.error("consumer %s: dead letter not stored (%r)", self.name, exc)
            return
        try:
            await msg.term()
        except Exception as exc:  # redelivered, stored again under the same id: no double
            logger.warning("consumer %s: term lost (%r)", self.name, exc)
        self.counters.dead_lettered += 1
        logger.warning(
            "consumer %s: dead-lettered %s seq %d: %s: %s",
            self.name,
            meta.stream,
            meta.sequence.stream,
            reason.value,
            detail,
        )

    async def undelivered(self, advisory: MaxDeliveries) -> None:
        """The server gave up on a message: dead-letter it unless the inbox has it."""
        try:
            raw = await self.js.get_msg(self.stream, advisory.stream_seq)
            headers = headers_of(raw.headers)
            msg_id = self.decoder.msg_id(headers)
            if msg_id is not None and await is_applied(self.pool, self.name, msg_id):
                return  # applied; only its acknowledgement was lost
            letter = DeadLetter(
                consumer=self.name,
                reason=DeadReason.MAX_DELIVERIES,
                detail=(
                    f"delivered {advisory.deliveries} times without an outcome (the process "
                    "died, or its hooks outlasted ack_wait, each time)"
                ),
                subject=raw.subject or "",
                stream=self.stream,
                stream_seq=advisory.stream_seq,
                deliveries=advisory.deliveries,
                msg_id=msg_id,
                event=headers.get("Hookbus-Event"),
                headers=headers,
                data=raw.data or b"",
                failed_at=now(),
            )
            await publish_dead_letter(self.js, letter, prefix=self.prefix)
        except Exception as exc:  # the advisory is not repeated: say so loudly
            logger.error(
                "consumer %s: %s seq %d reached max_deliver and could not be dead-lettered: %r",
                self.name,
                self.stream,
                advisory.stream_seq,
                exc,
            )
            return
        self.counters.dead_lettered += 1
        logger.warning(
            "consumer %s: dead-lettered %s seq %d: max-deliveries",
            self.name,
            self.stream,
            advisory.stream_seq,
        )
