"""Event payloads and event declarations.

A payload is a ``msgspec.Struct`` built once by the emitter and handed, the same object, to
every matching hook. Keyed payloads (entity, relation, load) expose their index key, the
entity or relation type, as ``payload.key``: an alias of the ``etype`` / ``rtype`` slot that
reads as fast as the field itself and stays out of ``repr`` and encoding.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final, final

import msgspec

__all__ = [
    "BUILTIN_EVENTS",
    "Edited",
    "EntityEvent",
    "EventSpec",
    "LoadEvent",
    "QueryEvent",
    "ReadOnlyEdited",
    "RelationEvent",
    "ServerEvent",
    "SessionEvent",
]


@final
class Edited(dict[str, Any]):
    """The pending change of an entity: attribute -> new value (CubicWeb's ``cw_edited``).

    Before-hooks may set a value or remove a key (cancelling that change); the store writes
    what is left. On update, ``oldnewvalue(attr)`` gives ``(old, new)``.

    >>> edited = Edited({"age": 41}, old={"age": 40})
    >>> edited.oldnewvalue("age")
    (40, 41)
    """

    __slots__ = ("_old",)

    def __init__(self, values: Mapping[str, Any] = (), /, *, old: Mapping[str, Any] = ()) -> None:  # type: ignore[assignment]
        super().__init__(values)
        self._old: Mapping[str, Any] = MappingProxyType(dict(old))

    @property
    def old(self) -> Mapping[str, Any]:
        """The values before the change (empty on add)."""
        return self._old

    def oldnewvalue(self, attr: str) -> tuple[Any, Any]:
        """Return ``(old, new)`` for ``attr``; ``KeyError`` if ``attr`` is not being changed."""
        return self._old.get(attr), self[attr]

    def readonly(self) -> ReadOnlyEdited:
        """A read-only view, handed to after-hooks."""
        return ReadOnlyEdited(self)


@final
class ReadOnlyEdited(Mapping[str, Any]):
    """A read-only view of an :class:`Edited`, with ``oldnewvalue``."""

    __slots__ = ("_edited",)

    def __init__(self, edited: Edited) -> None:
        self._edited = edited

    def __getitem__(self, attr: str) -> Any:
        return self._edited[attr]

    def __iter__(self) -> Iterator[str]:
        return iter(self._edited)

    def __len__(self) -> int:
        return len(self._edited)

    def __repr__(self) -> str:
        return f"ReadOnlyEdited({dict(self._edited)!r})"

    @property
    def old(self) -> Mapping[str, Any]:
        """The values before the change (empty on add)."""
        return self._edited.old

    def oldnewvalue(self, attr: str) -> tuple[Any, Any]:
        """Return ``(old, new)`` for ``attr``."""
        return self._edited.oldnewvalue(attr)


class EntityEvent(msgspec.Struct):
    """An entity added, updated or deleted; keyed by ``etype``.

    A plain dict given as ``edited`` is wrapped in an :class:`Edited`.
    """

    event: str
    etype: str
    eid: Any
    edited: Any = None
    entity: Any = None
    tx: Any = None

    def __post_init__(self) -> None:
        if self.edited is None:
            self.edited = Edited()
        elif type(self.edited) is dict:
            self.edited = Edited(self.edited)


class RelationEvent(msgspec.Struct):
    """A relation added or deleted between two entities; keyed by ``rtype``."""

    event: str
    rtype: str
    eidfrom: Any
    eidto: Any
    tx: Any = None


class LoadEvent(msgspec.Struct):
    """A row about to be loaded (``eid``) or loaded (``row``); keyed by ``etype``.

    Raising ``Break`` in a hook skips the row.
    """

    event: str
    etype: str
    eid: Any = None
    row: Any = None
    tx: Any = None


class QueryEvent(msgspec.Struct):
    """A SQL statement about to run, or run: ``status`` is the rows affected (after)."""

    event: str
    sql: str
    args: tuple[Any, ...] = ()
    status: Any = None
    tx: Any = None


class ServerEvent(msgspec.Struct):
    """The server starting, stopping, in maintenance, backed up or restored. No transaction."""

    event: str
    app: Any = None
    timestamp: Any = None


class SessionEvent(msgspec.Struct):
    """A session opening or closing."""

    event: str
    session: Any = None


# The dispatcher reads ``payload.key`` for every event without knowing the payload's type:
# keyed payloads alias their key field's slot descriptor as ``key`` (as fast as the field,
# and out of ``repr`` and encoding); unkeyed ones have a class attribute ``key = None``.
EntityEvent.key = EntityEvent.etype  # type: ignore[attr-defined]
RelationEvent.key = RelationEvent.rtype  # type: ignore[attr-defined]
LoadEvent.key = LoadEvent.etype  # type: ignore[attr-defined]
QueryEvent.key = ServerEvent.key = SessionEvent.key = None  # type: ignore[attr-defined]


@final
class EventSpec(msgspec.Struct, frozen=True):
    """A declared event: its name, its payload type, and the payload field it is keyed by.

    ``key`` is ``"etype"`` for entity and load events, ``"rtype"`` for relation events, the
    declared field for a keyed application event, ``None`` for an unkeyed event.
    """

    name: str
    payload: type
    key: str | None = None


def _specs(payload: type, key: str | None, *names: str) -> dict[str, EventSpec]:
    return {name: EventSpec(name, payload, key) for name in names}


BUILTIN_EVENTS: Final[Mapping[str, EventSpec]] = MappingProxyType(
    _specs(
        EntityEvent,
        "etype",
        "before_add_entity",
        "after_add_entity",
        "before_update_entity",
        "after_update_entity",
        "before_delete_entity",
        "after_delete_entity",
    )
    | _specs(
        RelationEvent,
        "rtype",
        "before_add_relation",
        "after_add_relation",
        "before_delete_relation",
        "after_delete_relation",
    )
    | _specs(LoadEvent, "etype", "before_load", "after_load")
    | _specs(QueryEvent, None, "before_query", "after_query")
    | _specs(
        ServerEvent,
        None,
        "server_startup",
        "server_shutdown",
        "server_maintenance",
        "server_backup",
        "server_restore",
    )
    | _specs(SessionEvent, None, "session_open", "session_close")
)
