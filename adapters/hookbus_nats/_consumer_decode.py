"""Decoding a NATS message into a declared event, or saying why it cannot be.

The wire format (written by the outbox relay): headers ``Nats-Msg-Id``, ``Hookbus-Event``
(a declared event name) and ``Hookbus-Wire: 1``; data, the ``msgspec.json`` encoding of the
event's payload struct. The payload is decoded into the struct the consumer's bus declares
for that event, never anything else (no pickle, no type named by the sender). Fields the
consumer does not know are ignored, so a consumer one version behind reads an event that
gained an optional field; a missing required field or a wrong type is *incompatible*, never
mis-decoded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, final

import msgspec

from hookbus import Bus

from ._dead_letters import MSG_ID_HEADER, DeadReason

__all__ = ["WIRE_VERSIONS", "Decoded", "EventDecoder", "Undecodable"]

#: The ``Hookbus-Wire`` envelope versions this consumer reads.
WIRE_VERSIONS: Final = frozenset({"1"})


class Undecodable(Exception):
    """A message that cannot become an event: ``reason`` and a one-line ``detail``."""

    def __init__(self, reason: DeadReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Final = reason
        self.detail: Final = detail


@final
class Decoded:
    """A message decoded: the event's name, its payload, and the inbox key (``msg_id``)."""

    __slots__ = ("event", "msg_id", "payload")

    def __init__(self, event: str, payload: Any, msg_id: str) -> None:
        self.event = event
        self.payload = payload
        self.msg_id = msg_id


@final
class EventDecoder:
    """Decoders for the events ``bus`` declares, each built once; an event declared after the
    decoder was made is found on its first message (the bus is asked again on a miss only)."""

    __slots__ = ("_bus", "_decoders")

    def __init__(self, bus: Bus) -> None:
        self._bus: Final = bus
        self._decoders: Final[dict[str, tuple[str, msgspec.json.Decoder[Any]]]] = {}
        self._learn()

    def _learn(self) -> None:
        for spec in self._bus.events():
            if spec.name not in self._decoders:
                self._decoders[spec.name] = (spec.name, msgspec.json.Decoder(spec.payload))

    def msg_id(self, headers: Mapping[str, str]) -> str | None:
        """The inbox key: a replay's ``Hookbus-Msg-Id``, else ``Nats-Msg-Id``."""
        return headers.get(MSG_ID_HEADER) or headers.get("Nats-Msg-Id") or None

    def decode(self, headers: Mapping[str, str] | None, data: bytes) -> Decoded:
        """The event of a message, or :class:`Undecodable` naming what is wrong with it."""
        headers = headers or {}
        wire = headers.get("Hookbus-Wire")
        if wire not in WIRE_VERSIONS:
            raise Undecodable(
                DeadReason.UNKNOWN_WIRE,
                f"Hookbus-Wire {wire!r} is not one of {sorted(WIRE_VERSIONS)}",
            )
        name = headers.get("Hookbus-Event")
        found = self._decoders.get(name) if name is not None else None
        if found is None and name is not None:
            self._learn()
            found = self._decoders.get(name)
        if found is None:
            raise Undecodable(
                DeadReason.UNDECLARED_EVENT, f"event {name!r} is not declared on this bus"
            )
        msg_id = self.msg_id(headers)
        if msg_id is None:
            raise Undecodable(DeadReason.NO_MESSAGE_ID, "no Nats-Msg-Id header")
        event, decoder = found
        try:
            payload = decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise Undecodable(DeadReason.INCOMPATIBLE, f"{event}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise Undecodable(DeadReason.MALFORMED, f"{event}: {exc}") from None
        named = getattr(payload, "event", event)
        if named != event:
            raise Undecodable(
                DeadReason.EVENT_MISMATCH, f"Hookbus-Event {event!r}, payload event {named!r}"
            )
        return Decoded(event, payload, msg_id)
