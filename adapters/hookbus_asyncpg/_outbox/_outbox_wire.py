"""The outbox's wire format: what a published event looks like on NATS, version 1.

A message's data is ``msgspec.json`` of the event's wire struct; its headers are
``Nats-Msg-Id`` (the outbox row's ``msg_id``), ``Hookbus-Event`` (the declared event name),
``Hookbus-Wire`` (this format's version) and the row's own headers (``traceparent`` when
tracing is on). The wire struct of an application event is the ``msgspec.Struct`` declared
for it; the built-in entity and relation events go as :class:`EntityMessage` and
:class:`RelationMessage`: plain values only, never the transaction object, the entity as a
dict of its attributes. A reader decodes with ``msgspec.json.decode(data,
type=wire_type(spec))``; unknown fields are ignored, so a reader one version behind decodes
an event that gained an optional field. Never pickle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, final

import msgspec

from hookbus import EntityEvent, EventSpec, RelationEvent

__all__ = [
    "EVENT_HEADER",
    "MSG_ID_HEADER",
    "WIRE_HEADER",
    "WIRE_VERSION",
    "EntityMessage",
    "RelationMessage",
    "encode_payload",
    "wire_type",
]

#: The version of the envelope, sent as ``Hookbus-Wire``; a reader refuses another.
WIRE_VERSION: Final = "1"
WIRE_HEADER: Final = "Hookbus-Wire"
EVENT_HEADER: Final = "Hookbus-Event"
MSG_ID_HEADER: Final = "Nats-Msg-Id"


@final
class EntityMessage(msgspec.Struct, frozen=True, kw_only=True):
    """An entity event on the wire: ``edited`` the change, ``entity`` the attributes as read
    back by the store (``None`` where the event carried no entity)."""

    event: str
    etype: str
    eid: Any
    edited: dict[str, Any] = {}
    entity: dict[str, Any] | None = None


@final
class RelationMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A relation event on the wire."""

    event: str
    rtype: str
    eidfrom: Any
    eidto: Any


_encoder: Final = msgspec.json.Encoder()


def wire_type(spec: EventSpec) -> type:
    """The struct a reader decodes an event of ``spec`` into."""
    if spec.payload is EntityEvent or issubclass(spec.payload, EntityEvent):
        return EntityMessage
    if spec.payload is RelationEvent or issubclass(spec.payload, RelationEvent):
        return RelationMessage
    return spec.payload


def _plain(values: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if values is None else dict(values)


def encode_payload(spec: EventSpec, payload: object) -> bytes:
    """``payload`` of the event ``spec`` as wire bytes; ``TypeError`` for a payload that is
    not the declared struct (or a value msgspec cannot encode)."""
    if not isinstance(payload, spec.payload):
        raise TypeError(
            f"event {spec.name!r} carries a {spec.payload.__qualname__}, "
            f"not {type(payload).__qualname__}"
        )
    if isinstance(payload, EntityEvent):
        payload = EntityMessage(
            event=payload.event,
            etype=payload.etype,
            eid=payload.eid,
            edited=dict(payload.edited),
            entity=_plain(payload.entity),
        )
    elif isinstance(payload, RelationEvent):
        payload = RelationMessage(
            event=payload.event, rtype=payload.rtype, eidfrom=payload.eidfrom, eidto=payload.eidto
        )
    try:
        return _encoder.encode(payload)
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(f"event {spec.name!r}: the payload cannot go on the wire: {exc}") from exc
