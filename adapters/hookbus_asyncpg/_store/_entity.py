"""What the store reads back: an entity, a read-only mapping of its attributes."""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    from ._schema import EntityType

__all__ = ["Entity", "entity_of"]


@final
class Entity(Mapping[str, Any]):
    """An entity as stored: ``entity["name"]``, ``entity.eid``, ``entity.etype``.

    A read-only mapping of every attribute of its type (``None`` where the column is NULL);
    ``dict(entity)`` gives the attributes, without the eid. Two entities are equal when
    their type, eid and attributes are; an entity also equals a plain mapping of the same
    attributes.
    """

    __slots__ = ("_values", "eid", "etype")

    def __init__(self, etype: str, eid: int, values: dict[str, Any]) -> None:
        self.etype = etype
        self.eid = eid
        self._values = values

    def __getitem__(self, attr: str) -> Any:
        return self._values[attr]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, attr: object) -> bool:
        return attr in self._values

    # The dict's own views: faster than the Mapping mixins, same behaviour.
    def keys(self) -> KeysView[str]:
        """The attribute names (what ``dict(entity)`` reads)."""
        return self._values.keys()

    def values(self) -> ValuesView[Any]:
        """The attribute values."""
        return self._values.values()

    def items(self) -> ItemsView[str, Any]:
        """``(attribute, value)`` pairs."""
        return self._values.items()

    def get(self, attr: str, default: Any = None) -> Any:
        """The value of ``attr``, or ``default`` when the type has no such attribute."""
        return self._values.get(attr, default)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Entity):
            return (self.etype, self.eid, self._values) == (other.etype, other.eid, other._values)
        if isinstance(other, Mapping):
            return self._values == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a mapping: not hashable

    def __repr__(self) -> str:
        return f"<Entity {self.etype} {self.eid} {self._values!r}>"


def entity_of(kind: EntityType, record: Any) -> Entity:
    """The entity of a row read as ``eid, <kind's columns>``."""
    return Entity(kind.name, record[0], dict(zip(kind.columns, record[1:], strict=True)))
