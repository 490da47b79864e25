"""insert_many's checks: each row's values once, required attributes before or after the
before_add_entity hooks (which may set them), with or without hooks to run."""

from __future__ import annotations

import asyncpg
import pytest
import pytest_asyncio
from _store_fixtures import SCHEMA
from hookbus_asyncpg import Store, transaction

import hookbus
from hookbus import EntityEvent, ValidationError


@pytest_asyncio.fixture
async def store(pool: asyncpg.Pool) -> Store:
    store = Store(hookbus.Bus(), SCHEMA)
    await store.create_tables(pool)
    await pool.execute("TRUNCATE hookbus_entities CASCADE")
    return store


async def test_without_hooks_a_missing_required_value_names_its_row(
    pool: asyncpg.Pool, store: Store
) -> None:
    with pytest.raises(ValidationError, match=r"Person\.name is required") as raised:
        async with transaction(pool):
            await store.insert_many("Person", [{"name": "Ann"}, {"age": 3}])
    assert any("in row 1 of insert_many" in note for note in raised.value.__notes__)
    assert await pool.fetchval("SELECT count(*) FROM person") == 0


async def test_a_before_hook_may_set_a_required_value(pool: asyncpg.Pool, store: Store) -> None:
    @store.bus.hook("before_add_entity")
    def name_it(event: EntityEvent) -> None:
        event.edited.setdefault("name", f"anonymous {event.eid}")

    async with transaction(pool):
        eids = await store.insert_many("Person", [{"name": "Ann"}, {"age": 3}])
    names = [r[0] for r in await pool.fetch("SELECT name FROM person ORDER BY eid")]
    assert names == ["Ann", f"anonymous {eids[1]}"]


async def test_a_before_hook_that_leaves_a_bad_value_is_refused(
    pool: asyncpg.Pool, store: Store
) -> None:
    @store.bus.hook("before_add_entity")
    def spoil(event: EntityEvent) -> None:
        event.edited["age"] = "old"

    with pytest.raises(ValidationError, match=r"Person\.age must be"):
        async with transaction(pool):
            await store.insert_many("Person", [{"name": "Ann"}])
    assert await pool.fetchval("SELECT count(*) FROM person") == 0


async def test_without_after_hooks_rows_are_still_marked_added(
    pool: asyncpg.Pool, store: Store
) -> None:
    async with transaction(pool):
        eids = await store.insert_many("Person", [{"name": "Ann"}, {"name": "Bo"}])
        assert all(hookbus.added_in_transaction(eid) for eid in eids)
    assert await pool.fetchval("SELECT count(*) FROM person") == 2


async def test_without_hooks_a_row_missing_a_mandatory_relation_fails_the_commit(
    pool: asyncpg.Pool, store: Store
) -> None:
    # owned_by is "1*": each project inserted must be owned by the end of the scope.
    with pytest.raises(ValidationError) as caught:
        async with transaction(pool):
            acme = await store.insert("Company", name="Acme")
            assert acme is not None
            owned, orphan = await store.insert_many(
                "Project", [{"title": "owned"}, {"title": "orphan"}]
            )
            assert owned is not None
            await store.add_relation(owned, "owned_by", acme)
    assert caught.value.eid == orphan
    assert "needs at least one owned_by" in caught.value.errors["owned_by"]
    assert await pool.fetchval("SELECT count(*) FROM project") == 0
