"""Bad input to the store: refused with a clear error before any SQL, the database unchanged.

Also the schema's declarations (names checked where they are declared) and create_tables.
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from _store_fixtures import SCHEMA, Recorder, snapshot
from hookbus_asyncpg import (
    Attribute,
    EntityType,
    RelationType,
    Schema,
    SchemaMismatchError,
    Store,
    UnknownNameError,
    transaction,
)

import hookbus
from hookbus import RegistrationError, TransactionStateError, ValidationError


@pytest_asyncio.fixture
async def store(pool: asyncpg.Pool) -> AsyncIterator[Store]:
    """A store of SCHEMA holding Ann (a Person) and Acme (a Company)."""
    store = Store(hookbus.Bus(), SCHEMA)
    await store.create_tables(pool)
    await pool.execute("TRUNCATE hookbus_entities CASCADE")
    async with transaction(pool):
        await store.insert("Person", name="Ann", age=40)
        await store.insert("Company", name="Acme")
    yield store


async def eid_of(pool: asyncpg.Pool, table: str) -> int:
    eid: int = await pool.fetchval(f"SELECT eid FROM {table}")
    return eid


async def refused(
    pool: asyncpg.Pool, store: Store, error: type[Exception], action: Any, *, reads: bool = False
) -> Exception:
    """Run ``action()`` in a scope; check it raises ``error`` before any SQL has run.

    With ``reads``, reads may run (the lookup of an eid's type, the old values), no write.
    """
    before = await snapshot(pool)
    queries = Recorder(store.bus, "before_query")
    with pytest.raises(error) as caught:
        async with transaction(pool):
            await action()
    statements = queries.sql()
    if reads:
        assert all(sql.startswith("SELECT") for sql in statements), statements
    else:
        assert statements == []
    assert await snapshot(pool) == before
    return caught.value


async def test_an_unknown_entity_type_is_refused(pool: asyncpg.Pool, store: Store) -> None:
    error = await refused(pool, store, UnknownNameError, lambda: store.insert("Persn", name="x"))
    assert "unknown entity type 'Persn'; did you mean 'Person'?" in str(error)
    await refused(pool, store, UnknownNameError, lambda: store.load("Nobody"))
    await refused(pool, store, UnknownNameError, lambda: store.insert_many("Nobody", [{}]))


async def test_an_unknown_attribute_is_refused(pool: asyncpg.Pool, store: Store) -> None:
    error = await refused(
        pool, store, UnknownNameError, lambda: store.insert("Person", name="x", agee=3)
    )
    assert "unknown attribute 'agee' of Person; did you mean 'age'?" in str(error)
    await refused(pool, store, UnknownNameError, lambda: store.load("Person", nme="Ann"))
    ann = await eid_of(pool, "person")
    # the eid's type is known from this process's insert: not even the lookup runs
    await refused(pool, store, UnknownNameError, lambda: store.update(ann, agee=3))


async def test_an_unknown_relation_is_refused(pool: asyncpg.Pool, store: Store) -> None:
    ann, acme = await eid_of(pool, "person"), await eid_of(pool, "company")
    error = await refused(
        pool, store, UnknownNameError, lambda: store.add_relation(acme, "bos", ann)
    )
    assert "did you mean 'boss'?" in str(error)
    await refused(pool, store, UnknownNameError, lambda: store.related(acme, "bos"))
    await refused(pool, store, UnknownNameError, lambda: store.delete_relation(acme, "x", ann))


async def test_a_value_of_the_wrong_type_is_refused(pool: asyncpg.Pool, store: Store) -> None:
    error = await refused(
        pool, store, ValidationError, lambda: store.insert("Person", name="x", age="40")
    )
    assert isinstance(error, ValidationError)
    assert error.errors == {"age": "Person.age must be an int, not '40'"}
    await refused(pool, store, ValidationError, lambda: store.insert("Person", name="x", age=True))
    await refused(pool, store, ValidationError, lambda: store.insert("Person", name="x", age=2**70))
    await refused(pool, store, ValidationError, lambda: store.load("Person", age="40"))
    rows: list[dict[str, Any]] = [{"name": "ok"}, {"name": 3}]
    error = await refused(pool, store, ValidationError, lambda: store.insert_many("Person", rows))
    assert "in row 1 of insert_many('Person')" in error.__notes__[0]
    ann = await eid_of(pool, "person")
    # None for a required attribute is refused once the before hooks ran (they may set it):
    # the old values were read for them, nothing was written.
    error = await refused(
        pool, store, ValidationError, lambda: store.update(ann, name=None), reads=True
    )
    assert "as the before_update_entity hooks left it" in error.__notes__


async def test_a_missing_required_attribute_is_refused(pool: asyncpg.Pool, store: Store) -> None:
    error = await refused(pool, store, ValidationError, lambda: store.insert("Person", age=3))
    assert isinstance(error, ValidationError)
    assert error.errors == {"name": "Person.name is required"}


async def test_a_hook_leaving_edited_invalid_is_refused_before_the_write(
    pool: asyncpg.Pool, store: Store
) -> None:
    @store.bus.hook("before_add_entity")
    def breaks_it(event: hookbus.EntityEvent) -> None:
        del event.edited["name"]

    error = await refused(pool, store, ValidationError, lambda: store.insert("Person", name="x"))
    assert "as the before_add_entity hooks left it" in error.__notes__


async def test_an_eid_that_does_not_exist_is_refused_after_a_read_only_lookup(
    pool: asyncpg.Pool, store: Store
) -> None:
    ann = await eid_of(pool, "person")
    missing = ann + 1_000_000
    for action in (
        lambda: store.get(missing),
        lambda: store.update(missing, age=3),
        lambda: store.delete(missing),
        lambda: store.add_relation(missing, "boss", ann),
        lambda: store.related(missing, "boss"),
    ):
        error = await refused(pool, store, LookupError, action, reads=True)
        assert f"no entity has the eid {missing}" in str(error)
    error = await refused(pool, store, TypeError, lambda: store.get("1"))  # type: ignore[arg-type]
    assert "an eid is an int, not '1'" in str(error)


async def test_entities_of_the_wrong_type_for_a_relation_are_refused(
    pool: asyncpg.Pool, store: Store
) -> None:
    ann, acme = await eid_of(pool, "person"), await eid_of(pool, "company")
    error = await refused(
        pool, store, ValidationError, lambda: store.add_relation(ann, "boss", acme)
    )
    assert "boss relates a Company to a Person, not a Person" in str(error)


@pytest.mark.parametrize(
    "name", ['Person"; DROP TABLE person; --', "Person'", "Per;son", "name = 1 OR 1=1"]
)
async def test_an_identifier_with_a_quote_or_semicolon_never_reaches_sql(
    pool: asyncpg.Pool, store: Store, name: str
) -> None:
    ann, acme = await eid_of(pool, "person"), await eid_of(pool, "company")
    await refused(pool, store, UnknownNameError, lambda: store.insert(name, name="x"))
    await refused(pool, store, UnknownNameError, lambda: store.insert("Person", **{name: "x"}))
    await refused(pool, store, UnknownNameError, lambda: store.load("Person", **{name: "x"}))
    await refused(pool, store, UnknownNameError, lambda: store.add_relation(acme, name, ann))


async def test_the_store_needs_a_scope_on_postgresql(store: Store) -> None:
    with pytest.raises(TransactionStateError, match="no transaction scope") as caught:
        await store.insert("Person", name="Ann")
    # the hint leads to a scope the store works in, not to hookbus.transaction() (in memory)
    assert "`async with hookbus_asyncpg.transaction(pool):`" in str(caught.value)
    assert "hookbus.transaction()" not in str(caught.value)
    with pytest.raises(TransactionStateError, match=r"hookbus_asyncpg\.transaction"):
        async with hookbus.transaction():
            await store.insert("Person", name="Ann")


# -- declarations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        (lambda: EntityType('Per"son'), "contains a double quote"),
        (lambda: EntityType("Per'son"), "contains a quote"),
        (lambda: EntityType("Person;"), "contains a semicolon"),
        (lambda: EntityType("2Person"), "is not an identifier"),
        (lambda: EntityType("Pérson"), "is not an identifier"),
        (lambda: EntityType("User"), "reserved word of SQL"),
        (lambda: EntityType("X", order=Attribute(int)), "reserved word of SQL"),
        (lambda: EntityType("X", Name=Attribute(str)), "must be lowercase"),
        (lambda: EntityType("X", eid=Attribute(int)), "eid is the store's key column"),
        (lambda: EntityType("X", a=Attribute(list)), "is not supported"),
        (lambda: EntityType("X", a=Attribute(int, default="1")), "is not an int"),
        (lambda: EntityType("hookbus_x"), "prefix hookbus_"),
        (lambda: EntityType("X" * 64), "longer than PostgreSQL's 63"),
        (lambda: RelationType("Boss", "A", "B"), "must be lowercase"),
        (lambda: RelationType("boss", "A", "B", cardinality="?"), "cardinality is two of"),
        (lambda: RelationType("select", "A", "B"), "reserved word of SQL"),
        (lambda: Schema([EntityType("A"), EntityType("a")]), "the table of entity type 'A'"),
        (lambda: Schema([EntityType("A")], [RelationType("r", "A", "B")]), "entity type 'B'"),
    ],
)
def test_bad_names_are_refused_where_they_are_declared(declare: Any, message: str) -> None:
    with pytest.raises(RegistrationError) as caught:
        declare()
    assert message in str(caught.value)


async def test_create_tables_is_idempotent_and_refuses_a_table_that_differs(
    pool: asyncpg.Pool,
) -> None:
    store = Store(hookbus.Bus(), Schema([EntityType("Gadget", size=Attribute(int))]))
    assert await store.create_tables(pool) == ["gadget"]
    assert await store.create_tables(pool) == []
    await pool.execute("CREATE TABLE widget (eid bigint PRIMARY KEY, size text)")
    other = Store(
        hookbus.Bus(),
        Schema(
            [
                EntityType("Widget", size=Attribute(int, required=True)),
                EntityType("Sprocket", teeth=Attribute(int)),
            ]
        ),
    )
    with pytest.raises(SchemaMismatchError) as caught:
        await other.create_tables(pool)
    assert "table widget: column size is text, declared bigint" in str(caught.value)
    assert await pool.fetchval("SELECT to_regclass('sprocket')") is None  # nothing created


async def test_create_tables_runs_in_the_open_scope(pool: asyncpg.Pool) -> None:
    store = Store(hookbus.Bus(), Schema([EntityType("Doohickey", size=Attribute(int))]))
    with pytest.raises(RuntimeError):
        async with transaction(pool) as tx:
            await store.create_tables(tx.connection)
            raise RuntimeError("roll back")
    assert await pool.fetchval("SELECT to_regclass('doohickey')") is None


# -- declarations are immutable: nothing reaches SQL unchecked ----------------------------------


def test_declared_objects_are_immutable() -> None:
    person = EntityType("Person", name=Attribute(str, required=True))
    boss = RelationType("boss", "Person", "Person")
    schema = Schema([person], [boss])
    for declared, attr, value in (
        (person, "table", 'person" (eid bigint); DROP TABLE victim; --'),
        (person, "columns", ("name", 'x"; DROP TABLE victim; --')),
        (person.attributes["name"], "sql_type", "text; DROP TABLE victim"),
        (person.attributes["name"], "required", False),
        (boss, "table", "victim"),
        (schema, "_entities", {}),
    ):
        with pytest.raises(AttributeError, match="immutable once declared"):
            setattr(declared, attr, value)
    with pytest.raises(AttributeError, match="immutable"):
        del person.table
    with pytest.raises(TypeError):
        person.attributes["age"] = Attribute(int)  # type: ignore[index]
    assert (person.table, boss.table, list(schema.entities)) == (
        "person",
        "boss_relation",
        ["Person"],
    )


async def test_create_tables_sends_only_the_declared_ddl(pool: asyncpg.Pool) -> None:
    await pool.execute("CREATE TABLE IF NOT EXISTS victim (id int)")
    gizmo = EntityType("Gizmo", size=Attribute(int))
    with pytest.raises(AttributeError):
        gizmo.table = 'gizmo (eid bigint); DROP TABLE victim; CREATE TABLE "x'  # type: ignore[misc]
    store = Store(hookbus.Bus(), Schema([gizmo]))
    assert await store.create_tables(pool) == ["gizmo"]
    assert await pool.fetchval("SELECT to_regclass('victim')") is not None


# -- names PostgreSQL would mangle or refuse later ------------------------------------------------


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        # <table>_pkey past 63 bytes would be cut short by PostgreSQL
        (lambda: EntityType("P" * 59), "longer than PostgreSQL's 63 bytes"),
        (lambda: EntityType("P" * 40, a_long_attribute_name=Attribute(str, unique=True)), "63"),
        (lambda: RelationType("r" * 50, "A", "B"), "longer than PostgreSQL's 63 bytes"),
        # names of the indexes PostgreSQL makes for keys and UNIQUE constraints
        (lambda: Schema([EntityType("Person"), EntityType("Person_pkey")]), "the index of"),
        (lambda: Schema([EntityType("Person_pkey"), EntityType("Person")]), "the table of"),
        (
            lambda: Schema(
                [EntityType("C", name=Attribute(str, unique=True)), EntityType("C_name_key")]
            ),
            "needs the table 'c_name_key', already taken by the index of entity type 'C'",
        ),
        (
            lambda: Schema(
                [EntityType("A"), EntityType("Knows_relation_eid_to_idx")],
                [RelationType("knows", "A", "A")],
            ),
            "already taken by the table of entity type 'Knows_relation_eid_to_idx'",
        ),
        # system columns of every table
        *(
            (lambda column=column: EntityType("X", **{column: Attribute(int)}), "system column")
            for column in ("xmin", "xmax", "cmin", "cmax", "ctid", "tableoid")
        ),
        # tables that would resolve into pg_catalog
        (lambda: EntityType("Pg_class"), "looked up in pg_catalog first"),
        (lambda: EntityType("pg_type"), "looked up in pg_catalog first"),
        (lambda: RelationType("pg_x", "A", "B"), "looked up in pg_catalog first"),
        # PostgreSQL's limit of 1,600 columns, eid included
        (
            lambda: EntityType("Wide", **{f"a{i}": Attribute(int) for i in range(1600)}),
            "at most 1600 columns",
        ),
        # options of their exact types
        (lambda: Attribute(str, required="no"), "required=...) is True or False, not 'no'"),  # type: ignore[arg-type]
        (lambda: Attribute(str, unique=1), "unique=...) is True or False, not 1"),  # type: ignore[arg-type]
        (lambda: Attribute("str"), "is not supported"),  # type: ignore[arg-type]
    ],
)
def test_names_postgresql_would_mangle_are_refused_where_declared(
    declare: Any, message: str
) -> None:
    with pytest.raises(RegistrationError) as caught:
        declare()
    assert message in str(caught.value)


async def test_the_longest_names_accepted_are_kept_whole(pool: asyncpg.Pool) -> None:
    # 58 characters: "<table>_pkey" is 63 bytes, what PostgreSQL keeps; a second create_tables
    # finds every constraint under the name it expects.
    longest = "L" * 58
    schema = Schema(
        [
            EntityType(longest, v=Attribute(int)),
            EntityType("Wide", **{f"a{i}": Attribute(int) for i in range(1599)}),
        ]
    )
    store = Store(hookbus.Bus(), schema)
    assert sorted(await store.create_tables(pool)) == [longest.lower(), "wide"]
    assert await store.create_tables(pool) == []
    async with transaction(pool):
        eid = await store.insert(longest, v=1)
        assert eid is not None
        assert (await store.get(eid))["v"] == 1


# -- values the driver would refuse, or store as something else ---------------------------------


async def test_values_the_driver_would_refuse_or_alter_are_refused_before_any_sql(
    pool: asyncpg.Pool, store: Store
) -> None:
    utc = datetime.UTC
    for attrs, field, wanted in (
        ({"value": 10**400}, "value", "too large"),
        ({"amount": decimal.Decimal("sNaN")}, "amount", "signalling NaN"),
        ({"amount": decimal.Decimal("1E+131072")}, "amount", "within PostgreSQL's numeric"),
        ({"amount": decimal.Decimal("1E-16384")}, "amount", "within PostgreSQL's numeric"),
        ({"taken_at": datetime.datetime(2026, 1, 1)}, "taken_at", "an aware datetime"),
        ({"time_of_day": datetime.time(12, tzinfo=utc)}, "time_of_day", "a time without tzinfo"),
    ):
        error = await refused(
            pool, store, ValidationError, lambda attrs=attrs: store.insert("Measure", **attrs)
        )
        assert isinstance(error, ValidationError) and wanted in error.errors[field], error.errors
    error = await refused(
        pool, store, ValidationError, lambda: store.insert("Person", name="lone \ud800 surrogate")
    )
    assert isinstance(error, ValidationError) and "lone surrogate" in error.errors["name"]
    # and what is accepted comes back as it was given
    values = {
        "value": 1e308,
        "amount": decimal.Decimal("1E+131071"),
        "taken_at": datetime.datetime(2026, 1, 1, 12, tzinfo=utc),
        "time_of_day": datetime.time(12, 30),
    }
    async with transaction(pool):
        eid = await store.insert("Measure", **values)
        assert eid is not None
        assert dict(await store.get(eid)) == values


async def test_an_eid_past_64_bits_is_refused_before_any_sql(
    pool: asyncpg.Pool, store: Store
) -> None:
    ann = await eid_of(pool, "person")
    huge = 2**70
    for action in (
        lambda: store.get(huge),
        lambda: store.update(huge, age=3),
        lambda: store.delete(huge),
        lambda: store.add_relation(huge, "boss", ann),
        lambda: store.related(huge, "boss"),
    ):
        error = await refused(pool, store, TypeError, action)
        assert "an int within 64 bits" in str(error)
    error = await refused(pool, store, ValidationError, lambda: store.load("Person", eid=huge))
    assert "an int within 64 bits" in str(error)


async def test_update_of_an_eid_not_cached_checks_the_values_before_any_sql(
    pool: asyncpg.Pool, store: Store
) -> None:
    ann = await eid_of(pool, "person")
    fresh = Store(store.bus, SCHEMA)  # knows no eid yet: its type would need a lookup
    error = await refused(pool, fresh, ValidationError, lambda: fresh.update(ann, name="\ud800"))
    assert isinstance(error, ValidationError) and "lone surrogate" in error.errors["name"]
    await refused(pool, fresh, ValidationError, lambda: fresh.update(ann, age="40"))
    error = await refused(pool, fresh, UnknownNameError, lambda: fresh.update(ann, agee=40))
    assert "did you mean 'age'?" in str(error)
    # an attribute another type declares is refused once the eid's type is looked up
    error = await refused(
        pool, fresh, UnknownNameError, lambda: fresh.update(ann, title="x"), reads=True
    )
    assert "unknown attribute 'title' of Person" in str(error)
