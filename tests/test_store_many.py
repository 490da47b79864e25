"""insert_many's checks: each row's values once, required attributes before or after the
before_add_entity hooks (which may set them), with or without hooks to run."""

from __future__ import annotations

import datetime
import decimal
from types import MappingProxyType
from typing import Any

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


# -- the check of many rows at once (no before_add_entity hook) gives the check of one row's
# refusal, word for word, for the first refused row; and accepts what that check accepts.

NOW = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)
BAD_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("Person", {"name": "x", "agee": 3}),
    ("Person", {"name": "x", 1: 3}),
    ("Person", {"name": "a\x00b"}),
    ("Person", {"name": "\ud800"}),
    ("Person", {"name": 3}),
    ("Person", {"name": b"x"}),
    ("Person", {"name": None}),
    ("Person", {"age": 3}),
    ("Person", {"name": "x", "age": True}),
    ("Person", {"name": "x", "age": 2**63}),
    ("Person", {"name": "x", "age": -(2**63) - 1}),
    ("Person", {"name": "x", "age": 1.0}),
    ("Person", {"name": "x", "deleted": 1}),
    ("Person", {"name": None, "age": "x", "deleted": "no"}),
    ("Measure", {"value": "1.0"}),
    ("Measure", {"value": 10**400}),
    ("Measure", {"value": True}),
    ("Measure", {"amount": decimal.Decimal("sNaN")}),
    ("Measure", {"amount": 1.5}),
    ("Measure", {"taken_at": datetime.datetime(2024, 5, 1)}),
    ("Measure", {"taken_at": datetime.date(2024, 5, 1)}),
    ("Measure", {"time_of_day": datetime.time(1, tzinfo=datetime.UTC)}),
]
GOOD: dict[str, dict[str, Any]] = {"Person": {"name": "ok", "age": 1}, "Measure": {"value": 1.0}}


def one_row_refusal(etype: str, row: dict[str, Any]) -> BaseException:
    """What the check of one row raises for ``row`` (the reference)."""
    kind = SCHEMA.entity(etype)
    with pytest.raises((ValidationError, LookupError)) as raised:
        kind.check(kind.with_defaults(dict(row)), adding=True, required=True)
    return raised.value


@pytest.mark.parametrize(("etype", "bad"), BAD_ROWS, ids=[repr(r) for _, r in BAD_ROWS])
async def test_a_refused_row_raises_what_the_check_of_one_row_raises(
    pool: asyncpg.Pool, store: Store, etype: str, bad: dict[str, Any]
) -> None:
    expected = one_row_refusal(etype, bad)
    rows = [GOOD[etype], GOOD[etype], bad, GOOD[etype], bad]
    with pytest.raises(type(expected)) as raised:
        async with transaction(pool):
            await store.insert_many(etype, rows)
    assert str(raised.value) == str(expected)
    if isinstance(expected, ValidationError):
        assert isinstance(raised.value, ValidationError)
        assert list(raised.value.errors.items()) == list(expected.errors.items())
        assert raised.value.eid is None
    assert raised.value.__notes__ == [f"in row 2 of insert_many({etype!r}); nothing was inserted"]
    assert await pool.fetchval("SELECT count(*) FROM hookbus_entities") == 0


async def test_the_first_refused_row_is_named_whatever_column_refuses_it(
    pool: asyncpg.Pool, store: Store
) -> None:
    # The rows are checked a column at a time (name before age): row 1's age is still the
    # refusal, not row 2's name.
    rows = [{"name": "ok"}, {"name": "x", "age": "old"}, {"name": "a\x00"}]
    with pytest.raises(ValidationError) as raised:
        async with transaction(pool):
            await store.insert_many("Person", rows)
    assert raised.value.errors == {"age": "Person.age must be an int, not 'old'"}
    assert raised.value.__notes__ == ["in row 1 of insert_many('Person'); nothing was inserted"]


class Name(str):
    """A subclass of str: the check of one row takes it."""


async def test_rows_the_check_of_one_row_accepts_are_written_as_given(
    pool: asyncpg.Pool, store: Store
) -> None:
    rows: list[Any] = [
        {"name": Name("sub")},
        {"name": "été", "age": 2**63 - 1, "deleted": None},  # an explicit None stays None
        {"name": "", "age": -(2**63)},
        [("name", "pairs"), ("age", 7)],  # what dict() takes
        MappingProxyType({"name": "proxy", "deleted": True}),
    ]
    async with transaction(pool):
        eids = await store.insert_many("Person", iter(rows))
        measures = await store.insert_many(
            "Measure",
            [
                {"value": 3, "amount": decimal.Decimal("1.5"), "taken_at": NOW},
                {"value": None, "time_of_day": datetime.time(1)},
            ],
        )
    got = await pool.fetch("SELECT eid, name, age, deleted FROM person ORDER BY eid")
    assert [tuple(r) for r in got] == [
        (eids[0], "sub", None, False),
        (eids[1], "été", 2**63 - 1, None),
        (eids[2], "", -(2**63), False),
        (eids[3], "pairs", 7, False),
        (eids[4], "proxy", None, True),
    ]
    got = await pool.fetch("SELECT value, amount, taken_at, time_of_day FROM measure ORDER BY eid")
    assert [tuple(r) for r in got] == [
        (3.0, decimal.Decimal("1.5"), NOW, None),
        (None, None, None, datetime.time(1)),
    ]
    assert len(measures) == 2


async def test_a_row_that_is_no_mapping_is_refused_as_dict_refuses_it(
    pool: asyncpg.Pool, store: Store
) -> None:
    with pytest.raises(ValueError, match="dictionary update sequence"):
        async with transaction(pool):
            await store.insert_many("Person", [{"name": "ok"}, "ab"])
    assert await pool.fetchval("SELECT count(*) FROM hookbus_entities") == 0
