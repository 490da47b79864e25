"""``tx.connection`` taken before the scope's first statement (a ``LazyConnection``), against a
real PostgreSQL: each statement method begins the scope and passes on its arguments, before
and after the scope has begun; what cannot wait for a connection is refused, sending nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import hookbus_asyncpg
import pytest
import pytest_asyncio
from _postgres import assert_pool_hands_out_everything, ids

import hookbus

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY);
TRUNCATE items;
"""


@pytest_asyncio.fixture
async def db(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """The pool, on an empty table; every connection back afterwards."""
    await pool.execute(SCHEMA)
    yield pool
    await assert_pool_hands_out_everything(pool)


Call = Callable[[Any], Awaitable[Any]]

# Each statement method, called with positional arguments that shape its answer, and the
# answer; then called with a keyword argument that must reach asyncpg (a timeout that fires).
STATEMENTS: dict[str, tuple[Call, Any, Call | None]] = {
    "execute": (
        lambda c: c.execute("SELECT generate_series($1::int, $2::int)", 1, 3),
        "SELECT 3",
        lambda c: c.execute("SELECT pg_sleep($1)", 5.0, timeout=0.1),
    ),
    "fetch": (
        lambda c: c.fetch("SELECT $1::int AS n, $2::text AS s", 1, "a"),
        [(1, "a")],
        lambda c: c.fetch("SELECT pg_sleep($1)", 5.0, timeout=0.1),
    ),
    "fetchrow": (
        lambda c: c.fetchrow("SELECT $1::int AS n, $2::text AS s", 1, "a"),
        (1, "a"),
        lambda c: c.fetchrow("SELECT pg_sleep($1)", 5.0, timeout=0.1),
    ),
    "fetchval": (
        lambda c: c.fetchval("SELECT $1::int + $2::int", 1, 2),
        3,
        lambda c: c.fetchval("SELECT pg_sleep($1)", 5.0, timeout=0.1),
    ),
    "executemany": (
        lambda c: c.executemany("INSERT INTO items VALUES ($1)", [(1,), (2,)]),
        None,
        lambda c: c.executemany("SELECT pg_sleep($1)", [(5.0,)], timeout=0.1),
    ),
    # One of the methods not written out (``__getattr__`` makes it): a positional argument
    # and keyword ones, in one call.
    "copy_records_to_table": (
        lambda c: c.copy_records_to_table("items", records=[(1,), (2,)], columns=["id"]),
        "COPY 2",
        None,
    ),
}


def _answer(result: Any) -> Any:
    if isinstance(result, list):
        return [tuple(row) for row in result]
    return tuple(result) if isinstance(result, asyncpg.Record) else result


@pytest.mark.parametrize("begun", [False, True], ids=["first statement", "after begin"])
@pytest.mark.parametrize("method", list(STATEMENTS))
async def test_each_statement_method_passes_on_its_arguments(
    db: asyncpg.Pool, method: str, begun: bool
) -> None:
    call, answer, with_keyword = STATEMENTS[method]
    async with hookbus_asyncpg.transaction(db) as tx:
        conn = tx.connection
        assert isinstance(conn, hookbus_asyncpg.LazyConnection)
        if begun:
            await tx.connect()
        assert _answer(await call(conn)) == answer
        assert tx.begun
    if method in ("executemany", "copy_records_to_table"):
        assert await ids(db) == [1, 2]
    if with_keyword is None:
        return
    # The keyword argument reaches asyncpg: the statement is cut short, and the scope with it.
    with pytest.raises(hookbus.TransactionAbortedError):
        async with hookbus_asyncpg.transaction(db) as tx:
            conn = tx.connection
            if begun:
                await tx.connect()
            with pytest.raises(TimeoutError):
                await with_keyword(conn)
            assert tx.begun


@pytest.mark.parametrize("name", ["close", "reset", "get_server_pid"])
async def test_what_cannot_wait_for_the_connection_is_refused_and_sends_nothing(
    db: asyncpg.Pool, name: str
) -> None:
    async with hookbus_asyncpg.transaction(db) as tx:
        conn = tx.connection
        with pytest.raises(hookbus.TransactionStateError, match=r"await tx\.connect"):
            getattr(conn, name)()
        assert not tx.begun
        with pytest.raises(AttributeError):
            conn.no_such_method  # noqa: B018 (the lookup is what is tested)
        # Once begun, the stand-in gives the connection's own attributes.
        await conn.execute("SELECT 1")
        assert conn.get_server_pid() == tx.connection.get_server_pid()
        assert conn.is_in_transaction()


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "asked-late"])
@pytest.mark.parametrize("name", [*STATEMENTS, "copy_records_to_table", "get_server_pid"])
async def test_a_task_outliving_its_scope_is_refused_its_connection(
    db: asyncpg.Pool, name: str, kept: bool
) -> None:
    calls: dict[str, Call] = {n: call for n, (call, _, _) in STATEMENTS.items()}
    calls["copy_records_to_table"] = lambda c: c.copy_records_to_table("items", records=[(2,)])

    async def use(c: Any) -> None:
        if name == "get_server_pid":  # not a coroutine: refused at the call
            c.get_server_pid()
        else:
            await calls[name](c)

    # The scope gave its connection back when its transaction ended: a statement sent later
    # through tx.connection (kept from inside the scope, or asked for afterwards) is refused
    # as a scope-state error, not run on a connection another scope may hold now.
    async with hookbus_asyncpg.transaction(db) as tx:
        conn = tx.connection
        await conn.execute("INSERT INTO items VALUES (1)")
    assert tx.state is hookbus.TransactionState.COMMITTED
    late = conn if kept else tx.connection
    refusal = (
        rf"^cannot use tx\.connection\.{name}: the transaction scope is committed, and its "
        r"connection went back to the pool when its transaction ended \(before postcommit\): "
        r"use a connection of your own \(`async with pool\.acquire\(\) as conn:`\) or a new "
        r"scope$"
    )
    with pytest.raises(hookbus.TransactionStateError, match=refusal):
        await use(late)
    with pytest.raises(
        hookbus.TransactionStateError, match=r"^cannot use await tx\.connect\(\): .* committed"
    ):
        await tx.connect()
    assert await ids(db) == [1]
