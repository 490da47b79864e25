"""What the store tests share: a schema, a store on a fresh bus, a recorder of events."""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Callable
from typing import Any

import asyncpg
from hookbus_asyncpg import Attribute, EntityType, RelationType, Schema

import hookbus

SCHEMA = Schema(
    entities=[
        EntityType(
            "Person",
            name=Attribute(str, required=True),
            age=Attribute(int),
            deleted=Attribute(bool, default=False),
        ),
        EntityType("Company", name=Attribute(str, required=True, unique=True)),
        EntityType("Project", title=Attribute(str, required=True)),
        EntityType(
            "Measure",
            value=Attribute(float),
            amount=Attribute(decimal.Decimal),
            taken_at=Attribute(datetime.datetime),
            time_of_day=Attribute(datetime.time),
        ),
    ],
    relations=[
        RelationType("boss", "Company", "Person", cardinality="?*"),
        RelationType("subsidiary_of", "Company", "Company", cardinality="?*"),
        RelationType("works_on", "Person", "Project", cardinality="**"),
        # every Project must have an owner: checked at precommit
        RelationType("owned_by", "Project", "Company", cardinality="1*"),
    ],
)

TABLES = (
    "hookbus_entities",
    "person",
    "company",
    "project",
    "measure",
    "boss_relation",
    "subsidiary_of_relation",
    "works_on_relation",
    "owned_by_relation",
)


async def snapshot(pool: asyncpg.Pool) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the schema, sorted: to compare before and after."""
    return {
        table: sorted(tuple(row) for row in await pool.fetch(f"SELECT * FROM {table}"))
        for table in TABLES
    }


class Recorder:
    """Registers a hook on the given events that appends ``(event, payload)`` to ``seen``."""

    def __init__(self, bus: hookbus.Bus, *events: str, priority: int = 0) -> None:
        self.seen: list[tuple[str, Any]] = []
        bus.register(self._record, *events, category="test", priority=priority)

    def _record(self, payload: Any) -> None:
        self.seen.append((payload.event, payload))

    def names(self) -> list[str]:
        """The events seen, in order."""
        return [name for name, _ in self.seen]

    def sql(self, event: str = "before_query") -> list[str]:
        """The statements seen on ``event``."""
        return [payload.sql for name, payload in self.seen if name == event]

    def payloads(self, event: str) -> list[Any]:
        """The payloads of ``event``."""
        return [payload for name, payload in self.seen if name == event]


def where_etype(etype: str) -> Callable[[Any], bool]:
    """A predicate for ``hookbus.where``: the payload is about ``etype``."""
    return lambda payload: bool(payload.etype == etype)
