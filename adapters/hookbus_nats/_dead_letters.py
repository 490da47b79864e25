"""Dead letters: messages a consumer could not apply, kept with their reason, and replayed.

A dead letter is published to ``<prefix>.<consumer>`` (default ``hookbus.dead.<consumer>``),
captured by a stream of its own (default ``HOOKBUS_DEAD``), with the reason twice: as headers
(``Hookbus-Dead-Reason``, ``Hookbus-Dead-Detail``, ``Hookbus-Dead-Consumer``), for tools that
read headers, and in a small msgspec envelope, :class:`DeadLetter`, that carries the original
subject, headers and bytes untouched. The consumer terminates the original message only once
the dead letter is stored.

Replaying republishes the original bytes and headers to the original subject, with
``Hookbus-Msg-Id`` set to the original message id (the inbox's key: a consumer that already
applied it does nothing) and a ``Nats-Msg-Id`` of its own (the original id may still be in the
stream's duplicate window), then deletes the dead letter. A replay cut short repeats itself
harmlessly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

import msgspec

__all__ = [
    "DEAD_LETTER_PREFIX",
    "DEAD_LETTER_STREAM",
    "DeadLetter",
    "DeadReason",
    "ReplayedDeadLetter",
    "StoredDeadLetter",
    "dead_letter_subject",
    "ensure_dead_letter_stream",
    "list_dead_letters",
    "publish_dead_letter",
    "replay_dead_letters",
]

DEAD_LETTER_STREAM: Final = "HOOKBUS_DEAD"
DEAD_LETTER_PREFIX: Final = "hookbus.dead"

#: The header naming the message id a replayed message stands for (the inbox's key).
MSG_ID_HEADER: Final = "Hookbus-Msg-Id"


class DeadReason(StrEnum):
    """Why a message was dead-lettered (the ``Hookbus-Dead-Reason`` header)."""

    MALFORMED = "malformed"  # not JSON, or not the shape the declared struct has
    INCOMPATIBLE = "incompatible"  # a required field missing, a field of the wrong type
    UNDECLARED_EVENT = "undeclared-event"  # Hookbus-Event names no declared event
    UNKNOWN_WIRE = "unknown-wire"  # Hookbus-Wire is not a version this consumer reads
    NO_MESSAGE_ID = "no-message-id"  # nothing to key the inbox by
    EVENT_MISMATCH = "event-mismatch"  # the payload's .event contradicts Hookbus-Event
    HANDLER_FAILED = "handler-failed"  # hooks kept failing until max_deliver
    MAX_DELIVERIES = "max-deliveries"  # every delivery ended without an outcome


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """The envelope of a dead letter: the reason, and the original message untouched."""

    consumer: str
    reason: DeadReason
    detail: str
    subject: str
    stream: str
    stream_seq: int
    deliveries: int
    msg_id: str | None
    event: str | None
    headers: dict[str, str]
    data: bytes
    failed_at: datetime


class StoredDeadLetter(msgspec.Struct, frozen=True):
    """A dead letter as stored: its sequence in the dead-letter stream, and the envelope."""

    seq: int
    letter: DeadLetter


class ReplayedDeadLetter(msgspec.Struct, frozen=True):
    """A dead letter republished to ``subject`` under ``msg_id`` (and deleted)."""

    seq: int
    subject: str
    msg_id: str | None


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(DeadLetter)


def dead_letter_subject(consumer: str, prefix: str = DEAD_LETTER_PREFIX) -> str:
    """The subject ``consumer``'s dead letters are published to."""
    return f"{prefix}.{consumer}"


async def ensure_dead_letter_stream(
    js: Any, stream: str = DEAD_LETTER_STREAM, prefix: str = DEAD_LETTER_PREFIX
) -> None:
    """Create the dead-letter stream (file storage, kept until replayed) if it is missing."""
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(name=stream, subjects=[f"{prefix}.>"])


async def publish_dead_letter(
    js: Any,
    letter: DeadLetter,
    *,
    prefix: str = DEAD_LETTER_PREFIX,
) -> None:
    """Store ``letter``: returns once the dead-letter stream acknowledged it.

    Its ``Nats-Msg-Id`` names the original stream sequence, so a consumer that dies between
    this and terminating the original, and dead-letters it again, stores it once.
    """
    headers = {
        "Nats-Msg-Id": f"dead.{letter.consumer}.{letter.stream}.{letter.stream_seq}",
        "Hookbus-Dead-Reason": letter.reason.value,
        "Hookbus-Dead-Detail": _one_line(letter.detail),
        "Hookbus-Dead-Consumer": letter.consumer,
    }
    if letter.event is not None:
        headers["Hookbus-Event"] = letter.event
    await js.publish(
        dead_letter_subject(letter.consumer, prefix), _encoder.encode(letter), headers=headers
    )


def _one_line(text: str, limit: int = 500) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


async def list_dead_letters(
    js: Any,
    consumer: str | None = None,
    *,
    stream: str = DEAD_LETTER_STREAM,
    prefix: str = DEAD_LETTER_PREFIX,
) -> AsyncIterator[StoredDeadLetter]:
    """The dead letters of ``consumer`` (every consumer's with ``None``), oldest first."""
    from nats.js.errors import NotFoundError

    subject = dead_letter_subject(consumer, prefix) if consumer else f"{prefix}.>"
    seq = 1
    while True:
        try:
            raw = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return
        yield StoredDeadLetter(raw.seq, _decoder.decode(raw.data or b""))
        seq = raw.seq + 1


async def replay_dead_letters(
    js: Any,
    consumer: str | None = None,
    *,
    seqs: Iterable[int] | None = None,
    stream: str = DEAD_LETTER_STREAM,
    prefix: str = DEAD_LETTER_PREFIX,
) -> AsyncIterator[ReplayedDeadLetter]:
    """Republish dead letters (all of ``consumer``'s, or those of ``seqs``), then delete them.

    Each is republished to its original subject with its original headers and bytes;
    ``Hookbus-Msg-Id`` carries the original message id, so the inbox still recognises it.
    """
    wanted = None if seqs is None else set(seqs)
    async for stored in list_dead_letters(js, consumer, stream=stream, prefix=prefix):
        if wanted is not None and stored.seq not in wanted:
            continue
        letter = stored.letter
        await js.publish(letter.subject, letter.data, headers=replay_headers(stored))
        await js.delete_msg(stream, stored.seq)
        yield ReplayedDeadLetter(stored.seq, letter.subject, letter.msg_id)


def replay_headers(stored: StoredDeadLetter) -> dict[str, str]:
    """The headers a replayed dead letter is republished with."""
    letter = stored.letter
    headers: dict[str, str] = dict(letter.headers)
    headers["Nats-Msg-Id"] = f"replay.{letter.stream}.{stored.seq}.{letter.msg_id}"
    if letter.msg_id is not None:
        headers[MSG_ID_HEADER] = letter.msg_id
    return headers


def now() -> datetime:
    """The time a dead letter is stamped with."""
    return datetime.now(UTC)


def headers_of(raw: Mapping[str, str] | None) -> dict[str, str]:
    """A message's headers as a plain dict (``None`` when it has none)."""
    return dict(raw) if raw else {}
