"""The store on a real PostgreSQL: every data event, with its semantics, on real rows."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from _store_fixtures import SCHEMA, Recorder, snapshot
from hookbus_asyncpg import Entity, SchemaMismatchError, Store, transaction

import hookbus
from hookbus import (
    Break,
    EntityEvent,
    Operation,
    QueryEvent,
    RelationEvent,
    ValidationError,
    added_in_transaction,
    current_transaction,
    deleted_in_transaction,
    is_instance,
    match_rtype,
)

ENTITY_EVENTS = (
    "before_add_entity",
    "after_add_entity",
    "before_update_entity",
    "after_update_entity",
    "before_delete_entity",
    "after_delete_entity",
)


@pytest_asyncio.fixture
async def store(pool: asyncpg.Pool) -> Store:
    """A store of SCHEMA on a fresh bus, on empty tables."""
    store = Store(hookbus.Bus(), SCHEMA)
    await store.create_tables(pool)
    await pool.execute("TRUNCATE hookbus_entities CASCADE")
    return store


async def people(pool: asyncpg.Pool) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await pool.fetch("SELECT name, age FROM person ORDER BY eid")]


# -- insert ------------------------------------------------------------------------------------


async def test_insert_emits_before_and_after_and_get_finds_the_row_by_eid_alone(
    pool: asyncpg.Pool, store: Store
) -> None:
    seen = Recorder(store.bus, *ENTITY_EVENTS)
    async with transaction(pool) as tx:
        eid = await store.insert("Person", name="Ann", age=40)
        assert eid is not None
        company = await store.insert("Company", name="Acme")
        row = await store.get(eid)
    assert company is not None and company != eid  # one eid space for every type
    assert seen.names() == ["before_add_entity", "after_add_entity"] * 2
    before, after = seen.payloads("before_add_entity")[0], seen.payloads("after_add_entity")[0]
    assert (before.etype, before.eid, before.tx) == ("Person", eid, tx)
    assert dict(before.edited) == {"name": "Ann", "age": 40, "deleted": False}  # default filled
    assert before.entity is None
    assert isinstance(after.entity, Entity) and after.entity.eid == eid
    assert dict(after.entity) == {"name": "Ann", "age": 40, "deleted": False}
    assert isinstance(row, Entity) and (row.eid, row.etype, row["name"]) == (eid, "Person", "Ann")
    assert await pool.fetchval("SELECT etype FROM hookbus_entities WHERE eid = $1", eid) == "Person"


async def test_a_single_insert_is_one_statement(pool: asyncpg.Pool, store: Store) -> None:
    seen = Recorder(store.bus, "before_query")
    async with transaction(pool):
        await store.insert("Person", name="warm-up")  # may fetch a block of eids
        del seen.seen[:]
        await store.insert("Person", name="Ann")
    assert len(seen.sql()) == 1 and seen.sql()[0].startswith("WITH e AS (INSERT")


async def test_before_hook_edits_are_written_in_the_same_statement(
    pool: asyncpg.Pool, store: Store
) -> None:
    @store.bus.hook("before_add_entity", "before_update_entity", select=is_instance("Person"))
    def normalise(event: EntityEvent) -> None:
        if "name" in event.edited:
            event.edited["name"] = event.edited["name"].upper()
        event.edited.pop("age", None)  # removing a key cancels that change

    seen = Recorder(store.bus, "after_add_entity", "before_query")
    async with transaction(pool):
        eid = await store.insert("Person", name="ann", age=40)
        assert eid is not None
        await store.update(eid, name="anne", age=41)
    assert await people(pool) == [("ANNE", None)]
    after = seen.payloads("after_add_entity")[0]
    assert after.entity["name"] == "ANN" and after.entity["age"] is None
    insert = next(q for q in seen.payloads("before_query") if "INSERT" in q.sql)
    assert "ANN" in insert.args and 40 not in insert.args


async def test_a_before_hook_that_breaks_cancels_the_insert(
    pool: asyncpg.Pool, store: Store
) -> None:
    @store.bus.hook("before_add_entity", select=is_instance("Person"))
    def refuse_bob(event: EntityEvent) -> None:
        if event.edited["name"] == "Bob":
            raise Break("no Bob")

    seen = Recorder(store.bus, "after_add_entity")
    async with transaction(pool):
        assert await store.insert("Person", name="Bob") is None
        ann = await store.insert("Person", name="Ann")
    assert await people(pool) == [("Ann", None)]
    assert [p.eid for p in seen.payloads("after_add_entity")] == [ann]


# -- update and delete -------------------------------------------------------------------------


async def test_update_gives_oldnewvalue_and_after_hooks_a_read_only_edited(
    pool: asyncpg.Pool, store: Store
) -> None:
    async with transaction(pool):
        eid = await store.insert("Person", name="Ann", age=40)
    assert eid is not None
    found: dict[str, Any] = {}

    @store.bus.hook("before_update_entity")
    def before(event: EntityEvent) -> None:
        found["oldnew"] = event.edited.oldnewvalue("age")
        found["entity"] = dict(event.entity)

    @store.bus.hook("after_update_entity")
    def after(event: EntityEvent) -> None:
        found["after"] = dict(event.entity)
        with pytest.raises(TypeError):
            event.edited["age"] = 0

    async with transaction(pool):
        assert await store.update(eid, age=41) is True
    assert found["oldnew"] == (40, 41)
    assert found["entity"] == {"name": "Ann", "age": 40, "deleted": False}
    assert found["after"] == {"name": "Ann", "age": 41, "deleted": False}
    assert await people(pool) == [("Ann", 41)]


async def test_update_reads_the_old_values_with_select_for_update(
    pool: asyncpg.Pool, store: Store
) -> None:
    async with transaction(pool):
        eid = await store.insert("Person", name="Ann", age=40)
    seen = Recorder(store.bus, "before_query")
    async with transaction(pool):
        assert eid is not None
        await store.update(eid, age=41)
    assert any(sql.endswith("FOR UPDATE") for sql in seen.sql())


async def test_a_cancelled_update_and_delete_leave_the_row(
    pool: asyncpg.Pool, store: Store
) -> None:
    async with transaction(pool):
        eid = await store.insert("Person", name="Ann", age=40)
    assert eid is not None

    @store.bus.hook("before_update_entity", "before_delete_entity")
    def frozen(event: EntityEvent) -> None:
        raise Break("frozen")

    seen = Recorder(store.bus, "after_update_entity", "after_delete_entity")
    async with transaction(pool):
        assert await store.update(eid, age=99) is False
        assert await store.delete(eid) is False
        assert not deleted_in_transaction(eid)
    assert await people(pool) == [("Ann", 40)]
    assert seen.seen == []


async def test_delete_emits_with_the_row_and_removes_its_relations(
    pool: asyncpg.Pool, store: Store
) -> None:
    async with transaction(pool):
        ann = await store.insert("Person", name="Ann")
        acme = await store.insert("Company", name="Acme")
        assert ann is not None and acme is not None
        await store.add_relation(acme, "boss", ann)
    seen = Recorder(store.bus, "before_delete_entity", "after_delete_entity")
    async with transaction(pool):
        assert await store.delete(ann) is True
        assert deleted_in_transaction(ann)
        with pytest.raises(LookupError):
            await store.get(ann)
    assert [(p.event, p.entity["name"]) for _, p in seen.seen] == [
        ("before_delete_entity", "Ann"),
        ("after_delete_entity", "Ann"),
    ]
    assert await pool.fetchval("SELECT count(*) FROM boss_relation") == 0


async def test_soft_delete_by_updating_a_flag_and_breaking_the_delete(
    pool: asyncpg.Pool, store: Store
) -> None:
    @store.bus.hook("before_delete_entity", select=is_instance("Person"))
    async def soft_delete(event: EntityEvent) -> None:
        await store.update(event.eid, deleted=True)
        raise Break("soft-deleted")

    async with transaction(pool):
        eid = await store.insert("Person", name="Ann")
        assert eid is not None
        assert await store.delete(eid) is False
        assert [p.eid for p in await store.load("Person", deleted=True)] == [eid]


# -- transactions: added/deleted, ValidationError, re-entrance ---------------------------------


async def test_added_and_deleted_in_transaction_are_kept_by_the_store(
    pool: asyncpg.Pool, store: Store
) -> None:
    answers: list[bool] = []

    @store.bus.hook("after_add_entity")
    def check(event: EntityEvent) -> None:
        answers.append(added_in_transaction(event.eid))

    async with transaction(pool):
        eid = await store.insert("Person", name="Ann")
        assert eid is not None and added_in_transaction(eid)
    async with transaction(pool):
        assert not added_in_transaction(eid)
        await store.delete(eid)
        assert deleted_in_transaction(eid)
    assert answers == [True]


async def test_a_validation_error_in_a_before_hook_leaves_the_database_as_it_was(
    pool: asyncpg.Pool, store: Store
) -> None:
    async with transaction(pool):
        await store.insert("Person", name="Ann", age=40)
    before = await snapshot(pool)

    @store.bus.hook("before_add_entity", "before_update_entity", select=is_instance("Person"))
    def age_range(event: EntityEvent) -> None:
        if not 0 <= event.edited.get("age", 0) <= 120:
            raise ValidationError(event.eid, {"age": "age must be between 0 and 120"})

    with pytest.raises(ValidationError) as caught:
        async with transaction(pool):
            await store.insert("Person", name="Bob", age=30)
            await store.insert("Person", name="Old", age=130)
    assert caught.value.errors == {"age": "age must be between 0 and 120"}
    assert await snapshot(pool) == before


async def test_a_validation_error_in_an_after_hook_or_an_operation_writes_nothing(
    pool: asyncpg.Pool, store: Store
) -> None:
    before = await snapshot(pool)

    @store.bus.hook("after_add_entity", select=is_instance("Company"))
    def no_evil(event: EntityEvent) -> None:
        if event.entity["name"] == "Evil":
            raise ValidationError(event.eid, {"name": "no"})

    class Refuse(Operation):
        async def precommit(self) -> None:
            raise ValidationError(None, {None: "refused at precommit"})

    with pytest.raises(ValidationError):
        async with transaction(pool):
            await store.insert("Person", name="Ann")
            await store.insert("Company", name="Evil")
    with pytest.raises(ValidationError):
        async with transaction(pool) as tx:
            await store.insert("Person", name="Ann")
            tx.add(Refuse())
    assert await snapshot(pool) == before


async def test_a_hook_error_caught_inside_the_scope_still_fails_the_commit(
    pool: asyncpg.Pool, store: Store
) -> None:
    before = await snapshot(pool)

    @store.bus.hook("after_add_entity", select=is_instance("Person"))
    def refuse(event: EntityEvent) -> None:
        raise ValidationError(event.eid, {"name": "refused after the row was written"})

    with pytest.raises(ValidationError) as caught:
        async with transaction(pool):
            with pytest.raises(ValidationError):
                await store.insert("Person", name="Ann")
            await store.insert("Company", name="Acme")  # carrying on cannot commit Ann
    assert any("doomed" in note for note in caught.value.__notes__)
    assert await snapshot(pool) == before


async def test_an_error_caught_around_a_savepoint_lets_the_rest_commit(
    pool: asyncpg.Pool, store: Store
) -> None:
    @store.bus.hook("before_add_entity", select=is_instance("Person"))
    def refuse_bob(event: EntityEvent) -> None:
        if event.edited["name"] == "Bob":
            raise ValidationError(event.eid, {"name": "no Bob"})

    async with transaction(pool) as tx:
        with pytest.raises(ValidationError):
            async with tx.savepoint():
                await store.insert("Person", name="Bob")
        await store.insert("Person", name="Ann")
    assert await people(pool) == [("Ann", None)]


async def test_a_hook_updating_another_entity_re_enters_the_bus_in_the_same_transaction(
    pool: asyncpg.Pool, store: Store
) -> None:
    async with transaction(pool):
        acme = await store.insert("Company", name="Acme")
        ann = await store.insert("Person", name="Ann", age=40)
    assert acme is not None and ann is not None

    @store.bus.hook("after_add_relation", select=match_rtype("boss"))
    async def bosses_get_older(event: RelationEvent) -> None:
        boss = await store.get(event.eidto)
        await store.update(event.eidto, age=boss["age"] + 1)

    events = ("after_add_relation", "before_update_entity", "after_update_entity")
    seen = Recorder(store.bus, *events, priority=-1)  # sees each event before the hook
    with pytest.raises(RuntimeError):
        async with transaction(pool):
            await store.add_relation(acme, "boss", ann)
            assert (await store.get(ann))["age"] == 41
            raise RuntimeError("roll both back")
    assert await people(pool) == [("Ann", 40)]
    assert await pool.fetchval("SELECT count(*) FROM boss_relation") == 0
    async with transaction(pool) as tx:
        await store.add_relation(acme, "boss", ann)
    assert await people(pool) == [("Ann", 41)]
    assert seen.names()[-3:] == list(events)
    assert all(p.tx is tx for _, p in seen.seen[-3:])


# -- query events -----------------------------------------------------------------------------


async def test_query_events_carry_the_sql_the_args_and_the_rows_affected(
    pool: asyncpg.Pool, store: Store
) -> None:
    async with transaction(pool):
        eid = await store.insert("Person", name="Ann", age=40)
    assert eid is not None
    seen = Recorder(store.bus, "before_query", "after_query")
    async with transaction(pool) as tx:
        await store.update(eid, age=41)
    update = [p for p in seen.payloads("after_query") if p.sql.startswith("UPDATE")]
    assert len(update) == 1
    assert update[0].args == (eid, 41) and update[0].status == 1 and update[0].tx is tx
    before = [p for p in seen.payloads("before_query") if p.sql.startswith("UPDATE")]
    assert before[0].status is None


async def test_a_query_hook_refuses_a_statement_and_nothing_is_written(
    pool: asyncpg.Pool, store: Store
) -> None:
    before = await snapshot(pool)

    class NothingUpdatedError(Exception):
        pass

    @store.bus.hook("after_query")
    def must_touch_a_row(event: QueryEvent) -> None:
        if event.sql.startswith("DELETE") and event.status == 0:
            raise NothingUpdatedError(event.sql)

    @store.bus.hook("before_query")
    def no_inserts_into_company(event: QueryEvent) -> None:
        if 'INSERT INTO "company"' in event.sql:
            raise PermissionError("read only")

    with pytest.raises(PermissionError):
        async with transaction(pool):
            await store.insert("Person", name="Ann")
            await store.insert("Company", name="Acme")
    assert await snapshot(pool) == before


async def test_a_break_on_before_query_cancels_the_action(pool: asyncpg.Pool, store: Store) -> None:
    @store.bus.hook("before_query")
    def no_inserts(event: QueryEvent) -> None:
        if "INSERT" in event.sql:
            raise Break()

    async with transaction(pool):
        assert await store.insert("Person", name="Ann") is None
    assert await people(pool) == []


# -- relations ---------------------------------------------------------------------------------


async def test_relations_are_added_read_both_ways_and_deleted_with_their_events(
    pool: asyncpg.Pool, store: Store
) -> None:
    seen = Recorder(
        store.bus,
        "before_add_relation",
        "after_add_relation",
        "before_delete_relation",
        "after_delete_relation",
    )
    async with transaction(pool) as tx:
        acme = await store.insert("Company", name="Acme")
        ann = await store.insert("Person", name="Ann")
        assert acme is not None and ann is not None
        assert await store.add_relation(acme, "boss", ann) is True
        assert [p.eid for p in await store.related(acme, "boss", role="subject")] == [ann]
        assert [p["name"] for p in await store.related(ann, "boss", role="object")] == ["Acme"]
        assert await store.delete_relation(acme, "boss", ann) is True
        assert await store.related(acme, "boss") == []
    assert [(n, p.rtype, p.eidfrom, p.eidto, p.tx) for n, p in seen.seen] == [
        (name, "boss", acme, ann, tx)
        for name in (
            "before_add_relation",
            "after_add_relation",
            "before_delete_relation",
            "after_delete_relation",
        )
    ]


async def test_a_break_cancels_a_relation(pool: asyncpg.Pool, store: Store) -> None:
    @store.bus.hook("before_add_relation", "before_delete_relation")
    def frozen(event: RelationEvent) -> None:
        raise Break()

    async with transaction(pool):
        acme = await store.insert("Company", name="Acme")
        ann = await store.insert("Person", name="Ann")
        assert acme is not None and ann is not None
        assert await store.add_relation(acme, "boss", ann) is False
    assert await pool.fetchval("SELECT count(*) FROM boss_relation") == 0


async def test_cardinality_at_most_one_is_checked_as_the_relation_is_added(
    pool: asyncpg.Pool, store: Store
) -> None:
    async with transaction(pool):
        acme = await store.insert("Company", name="Acme")
        ann = await store.insert("Person", name="Ann")
        bob = await store.insert("Person", name="Bob")
        assert acme is not None and ann is not None and bob is not None
        await store.add_relation(acme, "boss", ann)
    before = await snapshot(pool)
    with pytest.raises(ValidationError) as caught:
        async with transaction(pool):
            await store.add_relation(acme, "boss", bob)
    assert "at most one boss" in caught.value.errors["boss"]
    with pytest.raises(ValidationError) as caught:
        async with transaction(pool):
            await store.add_relation(acme, "boss", ann)
    assert "exists already" in caught.value.errors["boss"]
    assert await snapshot(pool) == before


async def test_cardinality_at_least_one_is_checked_at_precommit(
    pool: asyncpg.Pool, store: Store
) -> None:
    before = await snapshot(pool)
    with pytest.raises(ValidationError) as caught:
        async with transaction(pool):
            await store.insert("Project", title="orphan")
    assert "needs at least one owned_by" in caught.value.errors["owned_by"]
    assert await snapshot(pool) == before
    async with transaction(pool):  # the owner may come later in the same transaction
        project = await store.insert("Project", title="hookbus")
        acme = await store.insert("Company", name="Acme")
        assert project is not None and acme is not None
        await store.add_relation(project, "owned_by", acme)
    with pytest.raises(ValidationError):
        async with transaction(pool):
            await store.delete_relation(project, "owned_by", acme)
    async with transaction(pool):  # deleting the project itself is fine
        await store.delete(project)


# -- loads -------------------------------------------------------------------------------------


async def test_load_filters_by_equality_and_emits_load_events_per_row(
    pool: asyncpg.Pool, store: Store
) -> None:
    async with transaction(pool):
        ann = await store.insert("Person", name="Ann", age=40)
        bob = await store.insert("Person", name="Bob", age=40)
        await store.insert("Person", name="Cid")
    seen = Recorder(store.bus, "before_load", "after_load")
    async with transaction(pool):
        forty = await store.load("Person", age=40)
        unknown_age = await store.load("Person", age=None)
        everyone = await store.load("Person")
    assert [p.eid for p in forty] == [ann, bob]
    assert [p["name"] for p in unknown_age] == ["Cid"]
    assert len(everyone) == 3
    assert seen.names()[:4] == ["before_load", "after_load", "before_load", "after_load"]
    assert [p.eid for p in seen.payloads("after_load")[:2]] == [ann, bob]


async def test_a_break_on_load_skips_the_row_or_serves_its_value(
    pool: asyncpg.Pool, store: Store
) -> None:
    async with transaction(pool):
        ann = await store.insert("Person", name="Ann")
        bob = await store.insert("Person", name="Bob")
        assert ann is not None and bob is not None
    cache = {ann: Entity("Person", ann, {"name": "Ann (cached)", "age": None, "deleted": False})}

    @store.bus.hook("before_load", select=is_instance("Person"))
    def from_cache(event: hookbus.LoadEvent) -> None:
        if event.eid in cache:
            raise Break(cache[event.eid])

    @store.bus.hook("after_load", select=is_instance("Person"))
    def hide_bob(event: hookbus.LoadEvent) -> None:
        if event.row["name"] == "Bob":
            raise Break()

    seen = Recorder(store.bus, "before_query")
    async with transaction(pool):
        assert (await store.get(ann))["name"] == "Ann (cached)"
        served_without_sql = not [sql for sql in seen.sql() if sql.startswith("SELECT eid,")]
        assert [p["name"] for p in await store.load("Person")] == ["Ann (cached)"]
        with pytest.raises(LookupError, match="skipped"):
            await store.get(bob)
    assert served_without_sql


# -- insert_many --------------------------------------------------------------------------------


async def test_insert_many_copies_ten_thousand_rows_with_events_per_entity(
    pool: asyncpg.Pool, store: Store
) -> None:
    @store.bus.hook("before_add_entity", select=is_instance("Person"))
    def skip_thirteen(event: EntityEvent) -> None:
        if event.edited["age"] == 13:
            raise Break()
        event.edited["name"] = event.edited["name"].title()

    added: list[int] = []

    @store.bus.hook("after_add_entity", select=is_instance("Person"))
    def note(event: EntityEvent) -> None:
        assert added_in_transaction(event.eid)
        current_transaction().accumulate("imported", event.eid, Operation, container=list)
        added.append(event.eid)

    queries = Recorder(store.bus, "before_query")
    steps: list[tuple[int, int]] = []
    rows = [{"name": f"person {i}", "age": i % 100} for i in range(10_000)]
    async with transaction(pool):
        eids = await store.insert_many("Person", rows, progress=lambda d, t: steps.append((d, t)))
    assert len(eids) == 10_000
    assert [i for i, eid in enumerate(eids) if eid is None] == [
        i for i in range(10_000) if i % 100 == 13
    ]
    assert added == [eid for eid in eids if eid is not None]
    assert len(set(added)) == 9_900
    assert steps == [(10_000, 10_000)]
    copies = [sql for sql in queries.sql() if sql.startswith("COPY")]
    assert len(copies) == 2  # one for the entities table, one for the person table
    assert await pool.fetchval("SELECT count(*) FROM person") == 9_900
    assert await pool.fetchval("SELECT name FROM person WHERE age = 1 LIMIT 1") == "Person 1"


async def test_insert_many_in_batches_reports_progress(pool: asyncpg.Pool, store: Store) -> None:
    steps: list[tuple[int, int]] = []
    async with transaction(pool):
        eids = await store.insert_many(
            "Company",
            ({"name": f"c{i}"} for i in range(25)),
            progress=lambda d, t: steps.append((d, t)),
            batch_size=10,
        )
    assert steps == [(10, 25), (20, 25), (25, 25)]
    assert eids == sorted(eids)  # type: ignore[type-var]
    assert await pool.fetchval("SELECT count(*) FROM company") == 25


async def test_insert_many_with_a_duplicate_unique_value_writes_nothing(
    pool: asyncpg.Pool, store: Store
) -> None:
    before = await snapshot(pool)
    with pytest.raises(ValidationError) as caught:
        async with transaction(pool):
            await store.insert_many("Company", [{"name": "Twin"}, {"name": "Twin"}])
    assert "unique" in caught.value.errors["name"]
    assert await snapshot(pool) == before


async def test_a_unique_attribute_is_a_validation_error(pool: asyncpg.Pool, store: Store) -> None:
    async with transaction(pool):
        await store.insert("Company", name="Acme")
    with pytest.raises(ValidationError) as caught:
        async with transaction(pool):
            await store.insert("Company", name="Acme")
    assert caught.value.errors == {"name": "Company.name is unique: 'Acme' is taken"}


# -- delete: the relations of a deleted entity --------------------------------------------------


async def owned_project(pool: asyncpg.Pool, store: Store) -> tuple[int, int]:
    """A Project owned by a Company (owned_by is "1*": a project needs its owner)."""
    async with transaction(pool):
        acme = await store.insert("Company", name="Acme")
        project = await store.insert("Project", title="hookbus")
        assert acme is not None and project is not None
        await store.add_relation(project, "owned_by", acme)
    return project, acme


async def acme_with_boss_ann(pool: asyncpg.Pool, store: Store) -> tuple[int, int]:
    """A Company, Acme, whose boss is a Person, Ann."""
    async with transaction(pool):
        acme = await store.insert("Company", name="Acme")
        ann = await store.insert("Person", name="Ann")
        assert acme is not None and ann is not None
        await store.add_relation(acme, "boss", ann)
    return acme, ann


async def test_deleting_the_only_owner_of_a_project_fails_at_commit(
    pool: asyncpg.Pool, store: Store
) -> None:
    project, acme = await owned_project(pool, store)
    before = await snapshot(pool)
    with pytest.raises(ValidationError) as caught:
        async with transaction(pool):
            assert await store.delete(acme) is True
    assert caught.value.eid == project
    assert "needs at least one owned_by" in caught.value.errors["owned_by"]
    assert await snapshot(pool) == before


async def test_deleting_both_sides_of_a_mandatory_relation_commits(
    pool: asyncpg.Pool, store: Store
) -> None:
    project, acme = await owned_project(pool, store)
    async with transaction(pool):  # the owner first: the project, deleted too, needs none
        assert await store.delete(acme) is True
        assert await store.delete(project) is True
    other, globex = await owned_project(pool, store)
    async with transaction(pool):  # and the other way round
        assert await store.delete(other) is True
        assert await store.delete(globex) is True
    assert await pool.fetchval("SELECT count(*) FROM hookbus_entities") == 0
    assert await pool.fetchval("SELECT count(*) FROM owned_by_relation") == 0


async def test_deleting_an_entity_emits_the_delete_events_of_each_of_its_relations(
    pool: asyncpg.Pool, store: Store
) -> None:
    async with transaction(pool):
        acme = await store.insert("Company", name="Acme")
        parent = await store.insert("Company", name="Parent")
        ann = await store.insert("Person", name="Ann")
        children = [await store.insert("Company", name=f"child {i}") for i in range(3)]
        assert acme is not None and parent is not None and ann is not None
        await store.add_relation(acme, "boss", ann)
        await store.add_relation(acme, "subsidiary_of", parent)  # acme as subject
        for child in children:  # and as object
            assert child is not None
            await store.add_relation(child, "subsidiary_of", acme)
    rows_seen: list[int] = []

    @store.bus.hook("after_delete_relation")
    async def count_rows(event: RelationEvent) -> None:  # the row is gone when this runs
        table = f"{event.rtype}_relation"
        sql = f"SELECT count(*) FROM {table} WHERE eid_from = $1 AND eid_to = $2"
        rows_seen.append(await event.tx.connection.fetchval(sql, event.eidfrom, event.eidto))

    events = (
        "before_delete_entity",
        "after_delete_entity",
        "before_delete_relation",
        "after_delete_relation",
    )
    seen = Recorder(store.bus, *events, "before_query", priority=-1)
    async with transaction(pool) as tx:
        assert await store.delete(acme) is True
    expected = {
        ("boss", acme, ann),
        ("subsidiary_of", acme, parent),
        *(("subsidiary_of", child, acme) for child in children),
    }
    names = [name for name in seen.names() if name != "before_query"]
    assert names == ["before_delete_entity"] + ["before_delete_relation"] * 5 + [
        "after_delete_relation"
    ] * 5 + ["after_delete_entity"]
    for name in ("before_delete_relation", "after_delete_relation"):
        payloads = seen.payloads(name)
        assert {(p.rtype, p.eidfrom, p.eidto) for p in payloads} == expected
        assert all(p.tx is tx for p in payloads)
    assert rows_seen == [0] * 5
    finds = [sql for sql in seen.sql() if sql.startswith("SELECT eid_from, eid_to")]
    assert len(finds) == 3  # one per relation type of Company: boss, subsidiary_of, owned_by
    deletes = [sql for sql in seen.sql() if sql.startswith("DELETE")]
    assert len([sql for sql in deletes if "subsidiary_of_relation" in sql]) == 1  # set-based
    assert len([sql for sql in deletes if "boss_relation" in sql]) == 1
    assert not [sql for sql in deletes if "owned_by_relation" in sql]  # no row, no statement
    assert await pool.fetchval("SELECT count(*) FROM subsidiary_of_relation") == 0
    assert await pool.fetchval("SELECT count(*) FROM company") == 4


async def test_a_break_in_before_delete_relation_cancels_the_entity_delete(
    pool: asyncpg.Pool, store: Store
) -> None:
    _, ann = await acme_with_boss_ann(pool, store)
    before = await snapshot(pool)

    @store.bus.hook("before_delete_relation", select=match_rtype("boss"))
    def keep_bosses(event: RelationEvent) -> None:
        raise Break("Ann stays a boss")

    seen = Recorder(store.bus, "after_delete_relation", "after_delete_entity", "before_query")
    async with transaction(pool):
        assert await store.delete(ann) is False
        assert not deleted_in_transaction(ann)
    assert seen.payloads("after_delete_relation") == []
    assert seen.payloads("after_delete_entity") == []
    assert not [sql for sql in seen.sql() if sql.startswith("DELETE")]
    assert await snapshot(pool) == before


async def test_a_break_on_the_entity_delete_statement_leaves_its_relations(
    pool: asyncpg.Pool, store: Store
) -> None:
    _, ann = await acme_with_boss_ann(pool, store)
    before = await snapshot(pool)

    @store.bus.hook("before_query")
    def keep_entities(event: QueryEvent) -> None:
        if event.sql.startswith("DELETE FROM hookbus_entities"):
            raise Break()

    seen = Recorder(store.bus, "after_delete_relation")
    async with transaction(pool):
        assert await store.delete(ann) is False
    assert seen.seen == []
    assert await snapshot(pool) == before


# -- eids under concurrency ---------------------------------------------------------------------


async def test_concurrent_inserts_and_insert_many_share_the_free_eids_safely(
    pool: asyncpg.Pool, store: Store
) -> None:
    # Every scope on the database takes eids from one free list: an insert_many waiting for
    # fresh eids must not lose them to the single inserts running meanwhile, and back.
    async def singles(n: int) -> list[int | None]:
        eids: list[int | None] = []
        for i in range(n):
            async with transaction(pool):
                eids.append(await store.insert("Person", name=f"single {i}"))
        return eids

    async def many(n: int) -> list[int | None]:
        async with transaction(pool):
            return await store.insert_many(
                "Person", [{"name": f"many {i}"} for i in range(n)], batch_size=97
            )

    async with asyncio.TaskGroup() as group:  # 50 scopes on a pool of 10 connections
        tasks = [group.create_task(singles(20) if i % 2 else many(150 + 7 * i)) for i in range(50)]
    eids = [eid for task in tasks for eid in task.result()]
    expected = sum(20 if i % 2 else 150 + 7 * i for i in range(50))
    assert len(eids) == expected and None not in eids
    assert len(set(eids)) == expected
    assert await pool.fetchval("SELECT count(*) FROM person") == expected


async def test_a_relation_added_concurrently_to_an_entity_being_deleted_fails(
    pool: asyncpg.Pool, store: Store
) -> None:
    # The delete locks the entity first: a relation another scope adds to it meanwhile waits,
    # then fails, instead of being cascaded away with no event once the delete goes on.
    async with transaction(pool):
        acme = await store.insert("Company", name="Acme")
        globex = await store.insert("Company", name="Globex")
        ann = await store.insert("Person", name="Ann")
        assert acme is not None and globex is not None and ann is not None
        await store.add_relation(acme, "boss", ann)
    added = asyncio.Event()

    async def add_a_boss() -> None:
        async with transaction(pool):
            await store.add_relation(globex, "boss", ann)
            added.set()
            await asyncio.sleep(0.2)  # then commits, while the delete waits or not

    others: list[asyncio.Task[None]] = []

    @store.bus.hook("before_delete_relation")
    async def meanwhile(event: RelationEvent) -> None:  # the delete has read the relations
        others.append(asyncio.create_task(add_a_boss()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(added.wait(), 0.5)

    seen = Recorder(store.bus, "after_delete_relation")
    async with transaction(pool):
        assert await store.delete(ann) is True
    with pytest.raises(LookupError, match="no longer exists"):
        await others[0]
    assert not added.is_set()
    assert [(p.eidfrom, p.eidto) for p in seen.payloads("after_delete_relation")] == [(acme, ann)]
    assert await pool.fetchval("SELECT count(*) FROM boss_relation") == 0


# -- two schemas of one database (tenants chosen by search_path) -----------------------------------


@pytest_asyncio.fixture
async def tenants(dsn: str, pool: asyncpg.Pool) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    """Two pools on the module's database, one per schema (tenant_a, tenant_b)."""
    for schema in ("tenant_a", "tenant_b"):
        await pool.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")

    def tenant(schema: str) -> asyncpg.Pool:
        return asyncpg.create_pool(
            dsn, min_size=1, max_size=2, server_settings={"search_path": schema}
        )

    async with tenant("tenant_a") as a, tenant("tenant_b") as b:
        yield a, b


async def test_one_store_over_two_schemas_keeps_their_eids_and_types_apart(
    tenants: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    a, b = tenants
    store = Store(hookbus.Bus(), SCHEMA)
    assert "person" in await store.create_tables(a)
    assert "person" in await store.create_tables(b)
    eids: dict[str, list[int | None]] = {"a": [], "b": []}
    for i in range(3):  # interleaved: each tenant's eids come from its own sequence
        async with transaction(a):
            eids["a"].append(await store.insert("Person", name=f"a{i}"))
        async with transaction(b):
            eids["b"].append(await store.insert("Company", name=f"b{i}"))
    assert eids["a"] == eids["b"] == [1, 2, 3]
    for pool, etype in ((a, "Person"), (b, "Company")):
        async with transaction(pool):
            for eid in eids["a"]:
                assert eid is not None
                assert (await store.get(eid)).etype == etype  # each tenant's own type
        assert await pool.fetchval("SELECT count(*) FROM hookbus_entities") == 3
    async with transaction(b):  # and relations see each tenant's own entities
        ann = await store.insert("Person", name="Ann in b")
        assert ann == 4 and await store.add_relation(1, "boss", ann) is True


async def test_the_store_refuses_a_connection_without_its_tables(
    tenants: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    store = Store(hookbus.Bus(), SCHEMA)
    with pytest.raises(SchemaMismatchError, match=r"store\.create_tables\(pool\)` first"):
        async with transaction(tenants[0]):
            await store.insert("Person", name="Ann")


# -- deleted_in_transaction from the start of a delete; required attributes after the hooks -------


async def test_an_entity_is_deleted_in_transaction_in_the_hooks_its_delete_fires(
    pool: asyncpg.Pool, store: Store
) -> None:
    acme, ann = await acme_with_boss_ann(pool, store)
    seen: list[tuple[str, bool]] = []

    @store.bus.hook("before_delete_entity", "after_delete_entity")
    def entity(event: EntityEvent) -> None:
        seen.append((event.event, deleted_in_transaction(event.eid)))

    @store.bus.hook("before_delete_relation", "after_delete_relation", select=match_rtype("boss"))
    def a_company_keeps_a_boss(event: RelationEvent) -> None:
        seen.append((event.event, deleted_in_transaction(event.eidto)))
        if deleted_in_transaction(event.eidto):  # CubicWeb's pattern: the boss is going away
            return
        raise ValidationError(event.eidfrom, {"boss": "a company keeps its boss"})

    async with transaction(pool):
        assert await store.delete(ann) is True
    assert seen == [
        ("before_delete_entity", True),
        ("before_delete_relation", True),
        ("after_delete_relation", True),
        ("after_delete_entity", True),
    ]
    with pytest.raises(ValidationError, match="keeps its boss"):  # not so when ann stays
        async with transaction(pool):
            ben = await store.insert("Person", name="Ben")
            assert ben is not None
            await store.add_relation(acme, "boss", ben)
            await store.delete_relation(acme, "boss", ben)


async def test_a_cancelled_delete_unmarks_its_entity(pool: asyncpg.Pool, store: Store) -> None:
    async with transaction(pool):
        ann = await store.insert("Person", name="Ann")
    assert ann is not None
    during: list[bool] = []

    @store.bus.hook("before_delete_entity")
    def keep(event: EntityEvent) -> None:
        during.append(deleted_in_transaction(event.eid))
        raise Break("kept")

    async with transaction(pool):
        assert await store.delete(ann) is False
        assert not deleted_in_transaction(ann)
    assert during == [True]


async def test_a_required_attribute_may_be_computed_by_a_before_hook(
    pool: asyncpg.Pool, store: Store
) -> None:
    @store.bus.hook("before_add_entity", "before_update_entity", select=is_instance("Person"))
    def name_from_age(event: EntityEvent) -> None:
        if event.edited.get("name") is None:
            age = event.edited.get("age", event.entity and event.entity["age"])
            event.edited["name"] = f"aged {age}"

    async with transaction(pool):
        one = await store.insert("Person", age=3)
        many = await store.insert_many("Person", [{"age": 4}, {"age": 5, "name": None}])
        assert one is not None
        await store.update(one, name=None)  # on update too: the hook fills it again
    assert await people(pool) == [("aged 3", 3), ("aged 4", 4), ("aged 5", 5)]
    assert None not in many


# -- the "at least one" check runs late, and sees entities added at precommit ---------------------


async def test_an_entity_added_by_a_precommit_operation_is_checked_for_its_relations(
    pool: asyncpg.Pool, store: Store
) -> None:
    class AddOrphan(Operation):
        async def precommit(self) -> None:
            await store.insert("Project", title="added at precommit")

    class AddOrphanLate(hookbus.LateOperation):  # after the first check has run
        async def precommit(self) -> None:
            await store.insert("Project", title="added after the check")

    before = await snapshot(pool)
    for op in (AddOrphan, AddOrphanLate):
        with pytest.raises(ValidationError, match="needs at least one owned_by"):
            async with transaction(pool) as tx:
                acme = await store.insert("Company", name="Acme")
                owned = await store.insert("Project", title="owned")
                assert acme is not None and owned is not None
                await store.add_relation(owned, "owned_by", acme)
                tx.add(op())
        assert await snapshot(pool) == before


async def test_a_precommit_operation_may_set_a_required_relation(
    pool: asyncpg.Pool, store: Store
) -> None:
    class OwnIt(Operation):  # an ordinary operation: runs before the late check
        def __init__(self, project: int, owner: int) -> None:
            super().__init__()
            self.project, self.owner = project, owner

        async def precommit(self) -> None:
            await store.add_relation(self.project, "owned_by", self.owner)

    async with transaction(pool) as tx:
        project = await store.insert("Project", title="hookbus")
        acme = await store.insert("Company", name="Acme")
        assert project is not None and acme is not None
        tx.add(OwnIt(project, acme))
    assert await pool.fetchval("SELECT count(*) FROM owned_by_relation") == 1


# -- a row a before hook already removed ---------------------------------------------------------


async def test_deleting_a_row_a_before_hook_deleted_returns_false_and_fires_once(
    pool: asyncpg.Pool, store: Store
) -> None:
    async with transaction(pool):
        ann = await store.insert("Person", name="Ann")
        bob = await store.insert("Person", name="Bob")
    assert ann is not None and bob is not None
    handled: set[int] = set()

    @store.bus.hook("before_delete_entity", select=is_instance("Person"))
    async def delete_it_first(event: EntityEvent) -> None:
        if event.eid not in handled:
            handled.add(event.eid)
            if event.eid == ann:  # through the store: its own events fire
                assert await store.delete(event.eid) is True
            else:  # behind the store's back
                await event.tx.connection.execute(
                    "DELETE FROM hookbus_entities WHERE eid = $1", event.eid
                )

    seen = Recorder(store.bus, "after_delete_entity")
    async with transaction(pool):
        assert await store.delete(ann) is False
        assert await store.delete(bob) is False
        assert deleted_in_transaction(ann)
    assert [p.eid for p in seen.payloads("after_delete_entity")] == [ann]
    assert await people(pool) == []


async def test_updating_a_row_a_before_hook_deleted_is_a_clear_error(
    pool: asyncpg.Pool, store: Store
) -> None:
    async with transaction(pool):
        ann = await store.insert("Person", name="Ann")
    assert ann is not None

    @store.bus.hook("before_update_entity")
    async def delete_it(event: EntityEvent) -> None:
        await event.tx.connection.execute("DELETE FROM hookbus_entities WHERE eid = $1", event.eid)

    with pytest.raises(LookupError, match="a before_update_entity hook deleted it"):
        async with transaction(pool):
            await store.update(ann, age=3)
    assert await people(pool) == [("Ann", None)]


async def test_a_search_path_changed_after_the_store_used_the_connection_is_refused(
    tenants: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    a, b = tenants
    store = Store(hookbus.Bus(), SCHEMA)
    await store.create_tables(a)
    await store.create_tables(b)
    async with transaction(a):  # the store learns that a's connection works on tenant_a
        assert await store.insert("Person", name="in a") == 1
    # SET on a connection the store has used: found out at the first insert, nothing written
    with pytest.raises(SchemaMismatchError, match="search_path no longer resolves"):
        async with transaction(a) as tx:
            await tx.connection.execute("SET LOCAL search_path TO tenant_b")
            await store.insert("Person", name="meant for b")
    assert await b.fetchval("SELECT count(*) FROM hookbus_entities") == 0  # nothing written
    async with transaction(a) as tx:  # from now on that connection is asked at each scope
        await tx.connection.execute("SET LOCAL search_path TO tenant_b")
        assert await store.insert_many("Person", [{"name": "b1"}, {"name": "b2"}]) == [1, 2]
        assert await store.insert("Person", name="b3") == 3  # and the scope goes on with b's
    async with transaction(a):  # back to tenant_a: asked again, its own eids (2 went unused)
        assert await store.insert("Person", name="a again") == 3
    assert await b.fetchval("SELECT count(*) FROM person") == 3
    assert await a.fetchval("SELECT count(*) FROM person") == 2


async def test_deleting_a_relation_a_before_hook_deleted_returns_false_and_fires_once(
    pool: asyncpg.Pool, store: Store
) -> None:
    acme, ann = await acme_with_boss_ann(pool, store)

    @store.bus.hook("before_delete_relation", select=match_rtype("boss"))
    async def delete_it_first(event: RelationEvent) -> None:
        await event.tx.connection.execute("DELETE FROM boss_relation")

    seen = Recorder(store.bus, "after_delete_relation")
    async with transaction(pool):
        assert await store.delete_relation(acme, "boss", ann) is False
    assert seen.seen == []
    assert await pool.fetchval("SELECT count(*) FROM boss_relation") == 0
