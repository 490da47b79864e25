"""The outbox rows go with COMMIT: in its own message, in call order, gone with a savepoint
rolled back; a row refused there rolls the transaction back and is raised at the end of the
scope; a lost COMMIT's outcome is still found."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

import asyncpg
import hookbus_asyncpg
import msgspec
import pytest
import pytest_asyncio
from _outbox import OrderPlaced, install_outbox, shop_bus
from _postgres import gate_at_commit, holding_lock, ids, wait_until_blocked_on_lock
from _recording import Recorded
from hookbus_asyncpg import Outbox

import hookbus
from hookbus import Bus, TransactionAbortedError, TransactionStateError

LOCK = 4344  # the advisory lock the outbox's deferred trigger waits for at COMMIT


@pytest.fixture
def bus() -> Bus:
    return shop_bus()


@pytest_asyncio.fixture
async def db(pool: asyncpg.Pool, bus: Bus) -> AsyncIterator[asyncpg.Pool]:
    """The module's pool, the outbox installed afresh and ``items`` empty."""
    await install_outbox(pool, bus)
    await pool.execute("CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY); TRUNCATE items")
    yield pool
    held = [await pool.acquire(timeout=5) for _ in range(pool.get_max_size())]
    try:
        for conn in held:
            assert not conn.is_in_transaction()
    finally:
        for conn in held:
            await pool.release(conn)


async def orders(pool: asyncpg.Pool) -> list[int]:
    """The orders of the outbox's rows, in id order."""
    rows = await pool.fetch("SELECT payload FROM hookbus_outbox ORDER BY id")
    return [msgspec.json.decode(r["payload"], type=OrderPlaced).order for r in rows]


class Publish(hookbus.Operation):
    """Publishes ``order`` at precommit."""

    def __init__(self, outbox: Outbox, tx: hookbus_asyncpg.AsyncpgTransaction, order: int) -> None:
        super().__init__()
        self.outbox, self.tx, self.order = outbox, tx, order

    async def precommit(self) -> None:
        await self.outbox.publish(self.tx, "order_placed", OrderPlaced(self.order))


async def test_the_rows_go_with_commit_in_call_order(db: asyncpg.Pool, bus: Bus) -> None:
    outbox = Outbox(bus)
    sent: list[str] = []
    async with db.acquire() as conn:
        conn.add_query_logger(lambda query: sent.append(query.query))
        async with hookbus_asyncpg.transaction(conn) as tx:
            await conn.execute("INSERT INTO items VALUES (1)")
            msg_ids = [
                await outbox.publish(tx, "order_placed", OrderPlaced(n), key=f"k{n}")
                for n in range(1, 6)
            ]
            tx.add(Publish(outbox, tx, 6))  # publishes at precommit: after the body's rows
            msg_ids.append(await outbox.publish(tx, "order_placed", OrderPlaced(7)))
            assert await conn.fetchval("SELECT count(*) FROM hookbus_outbox") == 0
    assert await orders(db) == [1, 2, 3, 4, 5, 7, 6]
    rows = await db.fetch("SELECT msg_id, ordering_key, xid::text FROM hookbus_outbox ORDER BY id")
    assert [r["msg_id"] for r in rows][:6] == msg_ids
    assert [r["ordering_key"] for r in rows] == ["k1", "k2", "k3", "k4", "k5", None, None]
    assert len({r["xid"] for r in rows}) == 1
    # the INSERT, then the id's carrier, then COMMIT: one message, no round trip of its own
    (last,) = [query for query in sent if "INSERT INTO hookbus_outbox" in query]
    assert last.index("INSERT INTO hookbus_outbox") < last.index("DO $$") < last.index("COMMIT")


@pytest.mark.parametrize("on", ["pool", "connection"])
async def test_each_call_to_send_with_commit_is_sent_in_call_order(
    db: asyncpg.Pool, dsn: str, on: str
) -> None:
    given = await asyncpg.connect(dsn)
    try:
        async with hookbus_asyncpg.transaction(db if on == "pool" else given) as tx:
            if on == "pool":  # a scope that never began sends no COMMIT: refused at the call
                with pytest.raises(
                    TransactionStateError,
                    match=r"^cannot send statements with COMMIT before the scope has begun: a "
                    r"scope that never began sends no COMMIT; `await tx\.begin\(\)` first$",
                ):
                    tx.send_with_commit("INSERT INTO items VALUES (0);")
                await tx.begin()
            tx.send_with_commit("INSERT INTO items VALUES (1);")
            tx.send_with_commit("INSERT INTO items VALUES (2); INSERT INTO items VALUES (3);")
        with pytest.raises(
            TransactionStateError,
            match=r"^cannot send statements with COMMIT: the transaction scope is committed$",
        ):
            tx.send_with_commit("INSERT INTO items VALUES (4);")
    finally:
        await given.close()
    assert await ids(db) == [1, 2, 3]


async def test_text_of_any_kind_arrives_whole_and_nul_is_refused_at_the_call(
    db: asyncpg.Pool, bus: Bus
) -> None:
    odd = "O'Brien \\x00 \\\\ $$ é 東 \U0001f600 ''"
    outbox = Outbox(bus, subject_prefix="shop", headers=lambda: {"note": odd})
    async with hookbus_asyncpg.transaction(db) as tx:
        await outbox.publish(tx, "order_placed", OrderPlaced(1), key=odd)
        for bad in ("a\x00b", "\ud800"):
            with pytest.raises(ValueError, match="ordering key"):
                await outbox.publish(tx, "order_placed", OrderPlaced(2), key=bad)
        with pytest.raises(ValueError, match="NUL"):
            await Outbox(bus, headers=lambda: {"n": "\x00"}).publish(
                tx, "order_placed", OrderPlaced(3)
            )
        await tx.connection.execute("SET LOCAL standard_conforming_strings = off")
    row = await db.fetchrow("SELECT * FROM hookbus_outbox")
    assert row["ordering_key"] == odd
    assert msgspec.json.decode(row["headers"]) == {"note": odd}
    assert msgspec.json.decode(row["payload"], type=OrderPlaced) == OrderPlaced(1)
    assert await orders(db) == [1]
    with pytest.raises(TransactionStateError, match="readonly"):
        async with hookbus_asyncpg.transaction(db, readonly=True) as tx:
            await outbox.publish(tx, "order_placed", OrderPlaced(4))


async def test_a_savepoint_rolled_back_drops_its_rows(db: asyncpg.Pool, bus: Bus) -> None:
    outbox = Outbox(bus)
    async with hookbus_asyncpg.transaction(db) as tx:
        # entered before the scope began: its SAVEPOINT waits for the BEGIN publish sends
        with contextlib.suppress(RuntimeError):
            async with tx.savepoint():
                await outbox.publish(tx, "order_placed", OrderPlaced(1))
                raise RuntimeError("dropped")
        await outbox.publish(tx, "order_placed", OrderPlaced(2))
        async with tx.savepoint():
            await outbox.publish(tx, "order_placed", OrderPlaced(3))  # released: stays
        with contextlib.suppress(RuntimeError):
            async with tx.savepoint():
                async with tx.savepoint():
                    await outbox.publish(tx, "order_placed", OrderPlaced(4))  # released inside
                await outbox.publish(tx, "order_placed", OrderPlaced(5))
                raise RuntimeError("dropped with the inner one")
        async with hookbus_asyncpg.transaction(db):  # a nested scope joins as a savepoint
            await outbox.publish(tx, "order_placed", OrderPlaced(6))
        with contextlib.suppress(RuntimeError):
            async with hookbus_asyncpg.transaction(db):
                await outbox.publish(tx, "order_placed", OrderPlaced(7))
                raise RuntimeError("dropped")
        await outbox.publish(tx, "order_placed", OrderPlaced(8))
    assert await orders(db) == [2, 3, 6, 8]


async def test_a_scope_that_only_publishes_begins_and_commits(db: asyncpg.Pool, bus: Bus) -> None:
    outbox = Outbox(bus)
    async with hookbus_asyncpg.transaction(db) as tx:
        assert not tx.begun
        await outbox.publish(tx, "order_placed", OrderPlaced(1))
        assert tx.begun
    assert await orders(db) == [1]


REFUSE = "ALTER TABLE hookbus_outbox ADD CONSTRAINT refused CHECK (subject <> 'shop.refused')"


@pytest.mark.parametrize("xid_known", [False, True])
@pytest.mark.parametrize("on", ["pool", "connection"])
async def test_a_row_refused_at_commit_rolls_back_and_is_raised_at_the_end_of_the_scope(
    db: asyncpg.Pool, dsn: str, bus: Bus, xid_known: bool, on: str
) -> None:
    await db.execute(REFUSE)
    outbox = Outbox(bus, subject_prefix="shop")
    log: list[str] = []
    given = await asyncpg.connect(dsn)
    try:
        with pytest.raises(asyncpg.CheckViolationError, match="refused"):
            async with hookbus_asyncpg.transaction(db if on == "pool" else given) as tx:
                xid = await tx.connection.fetchval(
                    "INSERT INTO items VALUES (1) RETURNING pg_current_xact_id()::text"
                )
                if xid_known:
                    tx.note_transaction_id(xid)  # COMMIT is then sent plain, after the rows
                tx.add(Recorded(log, "a"))
                await outbox.publish(tx, "order_placed", OrderPlaced(1))
                await outbox.publish(tx, "order_placed", OrderPlaced(2), subject="shop.refused")
        assert not given.is_in_transaction()
        assert await given.fetchval("SELECT 1") == 1
    finally:
        await given.close()
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]
    assert await ids(db) == [] and await orders(db) == []


async def test_a_row_refused_for_privilege_is_not_taken_for_a_refused_do_block(
    db: asyncpg.Pool, bus: Bus
) -> None:
    # The error a refused DO block raises, raised by the row's INSERT (before the savepoint
    # that the DO block runs in): the transaction is rolled back and the error is raised.
    role = f"hookbus_no_outbox_{secrets.token_hex(4)}"
    await db.execute(f"CREATE ROLE {role}; GRANT ALL ON items TO {role}")
    outbox = Outbox(bus)
    log: list[str] = []
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="hookbus_outbox"):
            async with hookbus_asyncpg.transaction(db) as tx:
                await tx.connection.execute(f"SET LOCAL ROLE {role}")
                await tx.connection.execute("INSERT INTO items VALUES (1)")
                tx.add(Recorded(log, "a"))
                await outbox.publish(tx, "order_placed", OrderPlaced(1))
    finally:
        await db.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]
    assert await ids(db) == [] and await orders(db) == []
    async with hookbus_asyncpg.transaction(db) as tx:  # the next scope carries the id as ever
        await outbox.publish(tx, "order_placed", OrderPlaced(2))
    assert await orders(db) == [2]


@contextlib.asynccontextmanager
async def without_plpgsql(
    db: asyncpg.Pool, dsn: str
) -> AsyncIterator[tuple[asyncpg.Connection, list[str]]]:
    """A connection of a role that may write ``items`` and the outbox, on a database where
    plpgsql is not granted, and the statements sent on it."""
    role = f"hookbus_plain_{secrets.token_hex(4)}"
    await db.execute(f"CREATE ROLE {role} LOGIN; GRANT ALL ON items, hookbus_outbox TO {role}")
    await db.execute("REVOKE USAGE ON LANGUAGE plpgsql FROM PUBLIC")
    sent: list[str] = []
    try:
        async with (
            asyncpg.create_pool(dsn, user=role, min_size=1, max_size=1) as plain,
            plain.acquire() as conn,
        ):
            conn.add_query_logger(lambda query: sent.append(query.query))
            yield conn, sent
    finally:
        await db.execute("GRANT USAGE ON LANGUAGE plpgsql TO PUBLIC")
        await db.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


async def test_the_rows_are_written_once_where_plpgsql_is_not_granted(
    db: asyncpg.Pool, dsn: str, bus: Bus
) -> None:
    # The first COMMIT finds the DO block refused after the rows ran (they stay, and COMMIT
    # follows the id's round trip); the next sends the rows before asking the id.
    outbox = Outbox(bus)
    async with without_plpgsql(db, dsn) as (conn, sent):
        for n in (1, 2):
            async with hookbus_asyncpg.transaction(conn) as tx:
                await conn.execute("INSERT INTO items VALUES ($1)", n)
                await outbox.publish(tx, "order_placed", OrderPlaced(n))
    assert len([query for query in sent if "DO $$" in query]) == 1
    assert await ids(db) == [1, 2] and await orders(db) == [1, 2]


async def test_a_row_refused_where_plpgsql_is_not_granted_rolls_back(
    db: asyncpg.Pool, dsn: str, bus: Bus
) -> None:
    # Where the id is asked with a round trip (the DO block refused once), the rows go
    # before it: one refused there rolls the transaction back (ROLLBACK sent, the connection
    # left outside any transaction) and its error is raised, nothing else written.
    await db.execute(REFUSE)
    outbox = Outbox(bus, subject_prefix="shop")
    log: list[str] = []
    async with without_plpgsql(db, dsn) as (conn, sent):
        async with hookbus_asyncpg.transaction(conn) as tx:  # finds the DO block refused
            await outbox.publish(tx, "order_placed", OrderPlaced(1))
        with pytest.raises(asyncpg.CheckViolationError, match="refused"):
            async with hookbus_asyncpg.transaction(conn) as tx:
                await conn.execute("INSERT INTO items VALUES (2)")
                tx.add(Recorded(log, "a"))
                await outbox.publish(tx, "order_placed", OrderPlaced(2))
                await outbox.publish(tx, "order_placed", OrderPlaced(3), subject="shop.refused")
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT count(*) FROM items") == 0
    assert len([query for query in sent if "DO $$" in query]) == 1
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]
    assert await ids(db) == [] and await orders(db) == [1]


async def test_a_swallowed_error_before_the_rows_answers_rollback(
    db: asyncpg.Pool, bus: Bus
) -> None:
    outbox = Outbox(bus)
    for xid_known in (False, True):
        log: list[str] = []
        with pytest.raises(TransactionAbortedError, match="answered COMMIT with ROLLBACK"):
            async with hookbus_asyncpg.transaction(db) as tx:
                xid = await tx.connection.fetchval(
                    "INSERT INTO items VALUES (1) RETURNING pg_current_xact_id()::text"
                )
                if xid_known:
                    tx.note_transaction_id(xid)
                tx.add(Recorded(log, "a"))
                await outbox.publish(tx, "order_placed", OrderPlaced(1))
                with contextlib.suppress(asyncpg.DivisionByZeroError):
                    await tx.connection.execute("SELECT 1/0")
        assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]
    assert await ids(db) == [] and await orders(db) == []


async def _gated_publish(
    db: asyncpg.Pool, outbox: Outbox, log: list[str], xid_known: bool = False
) -> tuple[asyncio.Task[None], hookbus_asyncpg.AsyncpgTransaction, int]:
    """A scope whose one write is an outbox row (or, ``xid_known``, that first inserts an
    item and tells the scope its id), its COMMIT held by the outbox's deferred trigger on the
    lock the caller holds: its task, its transaction, its server pid."""
    started: asyncio.Queue[tuple[hookbus_asyncpg.AsyncpgTransaction, int]] = asyncio.Queue()

    async def scope() -> None:
        async with hookbus_asyncpg.transaction(db) as tx:
            if xid_known:
                tx.note_transaction_id(
                    await tx.connection.fetchval(
                        "INSERT INTO items VALUES (1) RETURNING pg_current_xact_id()::text"
                    )
                )
            await outbox.publish(tx, "order_placed", OrderPlaced(1))
            tx.add(Recorded(log, "a"))
            started.put_nowait((tx, await tx.connection.fetchval("SELECT pg_backend_pid()")))

    task = asyncio.create_task(scope())
    tx, pid = await started.get()
    await wait_until_blocked_on_lock(db, pid)
    return task, tx, pid


@pytest.mark.parametrize("xid_known", [False, True])
async def test_a_lost_commit_after_publish_is_found_committed(
    db: asyncpg.Pool, bus: Bus, xid_known: bool
) -> None:
    # The transaction's one write is the row sent with COMMIT: the id's notice, sent after
    # it, carries the id the outcome is asked with (or the id was told: a plain COMMIT).
    await db.execute(gate_at_commit("hookbus_outbox", LOCK))
    log: list[str] = []
    async with holding_lock(db, LOCK) as release:
        task, tx, _ = await _gated_publish(db, Outbox(bus), log, xid_known)
        tx.connection.terminate()  # the client side drops; the server carries on and commits
        await release()
        await task
    assert log == ["a.precommit", "a.postcommit"]
    assert await orders(db) == [1]
    assert await ids(db) == ([1] if xid_known else [])


async def test_a_lost_commit_after_publish_is_found_rolled_back(db: asyncpg.Pool, bus: Bus) -> None:
    await db.execute(gate_at_commit("hookbus_outbox", LOCK))
    log: list[str] = []
    async with holding_lock(db, LOCK):
        task, _, pid = await _gated_publish(db, Outbox(bus), log)
        assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(TransactionAbortedError):
            await task
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]
    assert await orders(db) == []
