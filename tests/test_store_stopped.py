"""A ``before_query`` hook that stops a statement (``Break``) cancels the store action it
belongs to, whichever statement of the action it is: the action answers "cancelled", nothing
of it is written, and the scope still commits (a cancelled action never dooms it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from _store_fixtures import SCHEMA, snapshot
from hookbus_asyncpg import Store, transaction

import hookbus
from hookbus import Break, QueryEvent

Action = Callable[[Store, dict[str, int]], Awaitable[Any]]


@pytest_asyncio.fixture
async def store(pool: asyncpg.Pool) -> Store:
    store = Store(hookbus.Bus(), SCHEMA)
    await store.create_tables(pool)
    await pool.execute("TRUNCATE hookbus_entities CASCADE")
    return store


async def people(store: Store, eids: dict[str, int]) -> Any:
    return await store.load("Person")


# (action, the start of the statement stopped, what the action answers when cancelled)
MANY = [{"name": f"p{n}"} for n in range(100)]  # more than the free list: fresh eids asked


def insert(s: Store, e: dict[str, int]) -> Awaitable[Any]:
    return s.insert("Person", name="Bo")


def insert_many(s: Store, e: dict[str, int]) -> Awaitable[Any]:
    return s.insert_many("Person", MANY)


def update(s: Store, e: dict[str, int]) -> Awaitable[Any]:
    return s.update(e["ann"], age=3)


def delete(s: Store, e: dict[str, int]) -> Awaitable[Any]:
    return s.delete(e["ann"])


def unrelate(s: Store, e: dict[str, int]) -> Awaitable[Any]:
    return s.delete_relation(e["acme"], "boss", e["cy"])


def relate(s: Store, e: dict[str, int]) -> Awaitable[Any]:
    return s.add_relation(e["acme"], "boss", e["ann"])


def related(s: Store, e: dict[str, int]) -> Awaitable[Any]:
    return s.related(e["acme"], "boss")


# (name, action, the start of the statement stopped, what the action answers when cancelled)
CASES: list[tuple[str, Action, str, Any]] = [
    ("insert: row", insert, "WITH e AS (INSERT", None),
    ("insert_many: eids", insert_many, "SELECT array_agg", [None] * 100),
    ("insert_many: copy", insert_many, "COPY", [None] * 100),
    ("update: lock", update, 'SELECT eid, "name"', False),
    ("update: row", update, "UPDATE", False),
    ("delete: lock", delete, "SELECT t.eid", False),
    ("delete: relations", delete, "SELECT eid_from", False),
    ("delete: row", delete, "DELETE FROM hookbus_entities", False),
    ("add_relation", relate, "INSERT INTO", False),
    ("delete_relation: lock", unrelate, "SELECT 1", False),
    ("delete_relation: row", unrelate, "DELETE", False),
    ("related", related, "SELECT t.eid", []),
    ("load", people, "SELECT eid", []),
]


@pytest.mark.parametrize(
    ("action", "stopped", "cancelled"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_a_stopped_statement_cancels_its_action_and_the_scope_commits(
    pool: asyncpg.Pool, store: Store, action: Action, stopped: str, cancelled: Any
) -> None:
    async with transaction(pool):
        eids = {
            "ann": await store.insert("Person", name="Ann"),
            "cy": await store.insert("Person", name="Cy"),
            "acme": await store.insert("Company", name="Acme"),
        }
        await store.add_relation(eids["acme"], "boss", eids["cy"])
    before = await snapshot(pool)
    seen: list[str] = []

    @store.bus.hook("before_query")
    def stop(event: QueryEvent) -> None:
        if event.sql.startswith(stopped):
            seen.append(event.sql)
            raise Break()

    async with transaction(pool) as tx:
        assert await action(store, eids) == cancelled
        assert tx.doomed is None
    assert seen, f"no statement starting with {stopped!r} was sent"
    assert tx.state is hookbus.TransactionState.COMMITTED
    assert await snapshot(pool) == before
