"""Faults of the asyncpg scope found when it was attacked, each against a real PostgreSQL.

A failed release after COMMIT, plpgsql not granted, a spoofed or lost transaction id,
cancellation during BEGIN, SQL in a savepoint name, nested scopes, the driver's own
``connection.transaction()`` inside a scope, and the scope's options.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar
from urllib.parse import urlsplit

import anyio
import asyncpg
import hookbus_asyncpg
import pytest
import pytest_asyncio
from _postgres import (
    gate_at_commit,
    holding_lock,
    ids,
    start_gated_commit,
    wait_until_blocked_on_lock,
)
from _recording import Recorded
from hookbus_asyncpg._transaction._options import TransactionOptions
from hookbus_asyncpg._transaction._outcome import XidNotice, find_outcome

import hookbus
from hookbus import (
    CommitOutcomeUnknownError,
    TransactionAbortedError,
    TransactionState,
    TransactionStateError,
)

LOCK = 4343  # the advisory lock the gated table's deferred trigger waits for at COMMIT

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY);
CREATE TABLE IF NOT EXISTS victim (id int);
CREATE TABLE IF NOT EXISTS gated (id int PRIMARY KEY);
{gate_at_commit("gated", LOCK)}
CREATE TABLE IF NOT EXISTS spoofed (id int PRIMARY KEY);
CREATE TABLE IF NOT EXISTS committed_xid (xid text);
-- Passes a committed transaction's id for the scope's, nonce included (read from the
-- scope's own query text), then waits at COMMIT like the gate.
CREATE OR REPLACE FUNCTION spoof() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    nonce text := substring(current_query() from 'hookbus xid ([0-9a-f]+) ');
BEGIN
    RAISE NOTICE 'hookbus xid % %', nonce, (SELECT xid FROM committed_xid LIMIT 1);
    RAISE NOTICE 'hookbus xid %', (SELECT xid FROM committed_xid LIMIT 1);
    PERFORM pg_advisory_xact_lock({LOCK});
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS spoof_at_commit ON spoofed;
CREATE CONSTRAINT TRIGGER spoof_at_commit AFTER INSERT ON spoofed
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION spoof();
TRUNCATE items, victim, gated, spoofed, committed_xid;
INSERT INTO victim VALUES (1);
"""


@pytest_asyncio.fixture
async def db(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """The pool, on empty tables; checked whole afterwards."""
    await pool.execute(SCHEMA)
    yield pool
    await assert_pool_serves(pool)


async def assert_pool_serves(pool: asyncpg.Pool) -> None:
    held = [await pool.acquire(timeout=5) for _ in range(pool.get_max_size())]
    try:
        for conn in held:
            assert await conn.fetchval("SELECT 1") == 1
            assert not conn.is_in_transaction()
    finally:
        for conn in held:
            await pool.release(conn)


class Call(hookbus.Operation):
    """Runs ``func`` in one phase, and records the phases it saw in ``log``."""

    def __init__(self, log: list[str], phase: str, func: Callable[[], Any]) -> None:
        super().__init__()
        self.log, self.phase, self.func = log, phase, func

    async def _run(self, phase: str) -> None:
        self.log.append(phase)
        if phase == self.phase:
            await self.func()

    async def precommit(self) -> None:
        await self._run("precommit")

    async def rollback(self) -> None:
        await self._run("rollback")

    async def postcommit(self) -> None:
        await self._run("postcommit")


# -- a failed release after a successful COMMIT (defect 1) ----------------------------------


class DiesOnReset(asyncpg.Connection):  # type: ignore[misc]
    """A connection whose backend is terminated, when its pid is in ``dying``, as the pool
    resets it on release (from another connection: a real termination, at a chosen point)."""

    dying: ClassVar[set[int]] = set()
    killer: ClassVar[asyncpg.Connection | None] = None

    async def reset(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109 (asyncpg's)
        pid = self.get_server_pid()
        if pid in self.dying and self.killer is not None:
            self.dying.discard(pid)
            assert await self.killer.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
        await super().reset(timeout=timeout)


async def test_a_connection_lost_after_commit_is_logged_not_raised(
    db: asyncpg.Pool, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    DiesOnReset.killer = killer = await asyncpg.connect(dsn)
    try:
        async with asyncpg.create_pool(
            dsn, min_size=1, max_size=2, connection_class=DiesOnReset
        ) as pool:
            for n in range(1, 4):  # the pool's reset fails each time; the pool still serves
                log.clear()
                with caplog.at_level(logging.WARNING, logger="hookbus"):
                    async with hookbus_asyncpg.transaction(pool) as tx:
                        await tx.connection.execute("INSERT INTO items VALUES ($1)", n)
                        pid = tx.connection.get_server_pid()

                        async def die_on_reset(pid: int = pid) -> None:
                            DiesOnReset.dying.add(pid)

                        tx.add(Call(log, "precommit", die_on_reset))
                assert log == ["precommit", "postcommit"]
                assert tx.state is hookbus.TransactionState.COMMITTED
                assert not DiesOnReset.dying  # the reset ran, and the backend was terminated
                assert pid not in [r[0] for r in await db.fetch("SELECT pid FROM pg_stat_activity")]
            assert await ids(db) == [1, 2, 3]
            await assert_pool_serves(pool)
    finally:
        DiesOnReset.killer = None
        await killer.close()
    assert caplog.text.count("could not be reset and returned to its pool") == 3


@pytest.mark.parametrize(
    ("on", "find_outcome"), [("pool", True), ("connection", True), ("pool", False)]
)
async def test_a_connection_lost_before_commit_is_sent_is_a_rollback(
    db: asyncpg.Pool, dsn: str, on: str, find_outcome: bool
) -> None:
    # The server ends the session during precommit, and the client has seen it: COMMIT is
    # never sent, so nothing was committed (not an unknown outcome, even where the outcome
    # of a lost COMMIT is never asked).
    log: list[str] = []

    async def end_the_session(tx: hookbus_asyncpg.AsyncpgTransaction) -> None:
        closed = asyncio.Event()
        tx.connection.add_termination_listener(lambda _: closed.set())
        pid = tx.connection.get_server_pid()
        assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
        await closed.wait()

    given = await asyncpg.connect(dsn)
    try:
        with pytest.raises(asyncpg.InterfaceError, match="lost before COMMIT was sent"):
            source = db if on == "pool" else given
            async with hookbus_asyncpg.transaction(source, find_outcome=find_outcome) as tx:
                await tx.connection.execute("INSERT INTO items VALUES (1)")
                tx.add(Call(log, "precommit", lambda tx=tx: end_the_session(tx)))
    finally:
        await given.close()
    assert log == ["precommit", "rollback"]
    assert await ids(db) == []


# -- COMMIT due while a task the block started still runs a statement ------------------------


@pytest.mark.parametrize("xid", ["notice", "known", "not-sought"])
@pytest.mark.parametrize("on", ["pool", "connection"])
async def test_commit_due_while_another_statement_runs_rolls_back_and_says_why(
    db: asyncpg.Pool, dsn: str, on: str, xid: str
) -> None:
    # asyncpg refuses to send COMMIT while a statement the block left running is in progress
    # on the scope's connection: nothing was sent (not a lost COMMIT whose outcome is sought).
    # That statement belongs to the transaction: the connection is closed so that PostgreSQL
    # rolls it all back, and the error says why.
    log: list[str] = []
    given = await asyncpg.connect(dsn)
    source: Any = db if on == "pool" else given
    try:
        async with holding_lock(db, LOCK) as release:
            with pytest.raises(TransactionStateError, match=r"COMMIT was not sent: .*in progress"):
                async with hookbus_asyncpg.transaction(
                    source, find_outcome=xid != "not-sought"
                ) as tx:
                    conn = await tx.connect()
                    written = await conn.fetchval(
                        "INSERT INTO items VALUES (1) RETURNING pg_current_xact_id()::text"
                    )
                    if xid == "known":
                        tx.note_transaction_id(written)
                    tx.add(Recorded(log, "a"))
                    late = asyncio.create_task(
                        conn.execute(
                            "INSERT INTO items SELECT 2 FROM pg_advisory_xact_lock($1)", LOCK
                        )
                    )
                    await wait_until_blocked_on_lock(db, conn.get_server_pid())
            await release()
        with pytest.raises(asyncpg.ConnectionDoesNotExistError):
            await late
        if on == "connection":
            assert given.is_closed()
    finally:
        await given.close()
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]
    assert await ids(db) == []


# A statement that outlives the first cancel, as one does whose cancel request reached the
# server before the statement did (PostgreSQL then drops the request): caught and slept again.
DEAF = (
    "DO $$BEGIN PERFORM pg_sleep(30); "
    "EXCEPTION WHEN query_canceled THEN PERFORM pg_sleep(30); END$$"
)


@pytest.mark.parametrize("on", ["pool", "connection"])
async def test_a_scope_cancelled_during_a_statement_the_cancel_did_not_stop_still_ends(
    db: asyncpg.Pool, dsn: str, on: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The rollback waits for the statement to stop only so long: then the connection is
    # closed, PostgreSQL rolls back when the statement ends, and the scope ends rolled back.
    log: list[str] = []
    given = await asyncpg.connect(dsn)
    source: Any = db if on == "pool" else given
    pids: list[int] = []

    async def scope() -> None:
        async with hookbus_asyncpg.transaction(source) as tx:
            await tx.connection.execute("INSERT INTO items VALUES (1)")
            tx.add(Recorded(log, "a"))
            pids.append(tx.connection.get_server_pid())
            await tx.connection.execute(DEAF)

    try:
        task = asyncio.create_task(scope())
        for _ in range(1000):  # until the server runs it: nothing to await
            if pids and await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query = $2 "
                "AND state = 'active'",
                pids[0],
                DEAF,
            ):
                break
            await asyncio.sleep(0.01)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=20)
        assert done, "the scope still waits for the statement (60 s in all)"
        with pytest.raises(asyncio.CancelledError):
            await task
        assert log == ["a.rollback"]
        assert "closed the connection" in caplog.text
        if on == "connection":
            assert given.is_closed()
        assert await ids(db) == []  # the row is not committed, nor ever will be:
        assert await db.fetchval("SELECT pg_terminate_backend($1)", pids[0])
        assert await ids(db) == []
    finally:
        await given.close()


# -- plpgsql not granted (defect 3) ----------------------------------------------------------


@pytest_asyncio.fixture
async def plain_pool(db: asyncpg.Pool, dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool of an ordinary role, on a database where plpgsql is not granted to PUBLIC."""
    role = f"hookbus_plain_{secrets.token_hex(4)}"
    await db.execute(f"CREATE ROLE {role} LOGIN")
    await db.execute(f"GRANT ALL ON items, gated TO {role}")
    await db.execute("REVOKE USAGE ON LANGUAGE plpgsql FROM PUBLIC")
    try:
        async with asyncpg.create_pool(dsn, user=role, min_size=1, max_size=2) as pool:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="plpgsql"):
                await pool.execute("DO $$BEGIN END$$")
            yield pool
    finally:
        await db.execute("GRANT USAGE ON LANGUAGE plpgsql TO PUBLIC")
        await db.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


async def test_commits_where_plpgsql_is_not_granted(plain_pool: asyncpg.Pool) -> None:
    log: list[str] = []
    sent: list[str] = []
    async with plain_pool.acquire() as conn:
        conn.add_query_logger(lambda query: sent.append(query.query))
        for n in range(1, 4):  # the first commit finds the DO block refused, the next know it
            async with hookbus_asyncpg.transaction(conn) as tx:
                await conn.execute("INSERT INTO items VALUES ($1)", n)
                tx.add(Recorded(log, str(n)))
    assert len([query for query in sent if "DO $$" in query]) == 1
    assert await ids(plain_pool) == [1, 2, 3]
    assert log == [f"{n}.{phase}" for n in "123" for phase in ("precommit", "postcommit")]


async def test_a_swallowed_error_aborts_where_plpgsql_is_not_granted(
    plain_pool: asyncpg.Pool,
) -> None:
    log: list[str] = []
    async with plain_pool.acquire() as conn:
        async with hookbus_asyncpg.transaction(conn) as tx:  # finds the DO block refused
            await conn.execute("INSERT INTO items VALUES (1)")
        with pytest.raises(TransactionAbortedError, match="answered COMMIT with ROLLBACK"):
            async with hookbus_asyncpg.transaction(conn) as tx:  # asks the id first
                await conn.execute("INSERT INTO items VALUES (2)")
                tx.add(Recorded(log, "a"))
                with contextlib.suppress(asyncpg.DivisionByZeroError):
                    await conn.execute("SELECT 1/0")
        assert not conn.is_in_transaction()
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]
    assert await ids(plain_pool) == [1]


async def test_a_lost_commit_is_found_where_plpgsql_is_not_granted(
    db: asyncpg.Pool, plain_pool: asyncpg.Pool
) -> None:
    log: list[str] = []
    async with holding_lock(db, LOCK) as release:
        task, tx, _ = await start_gated_commit(plain_pool, log, watcher=db)
        tx.connection.terminate()  # the client side drops; the server carries on and commits
        await release()
        await task
    assert log == ["a.precommit", "a.postcommit"]
    assert await ids(db, "gated") == [1]


REFUSED_AT_COMMIT = """
CREATE TABLE IF NOT EXISTS refused (id int);
CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'refused at COMMIT' USING ERRCODE = 'insufficient_privilege';
END $$;
DROP TRIGGER IF EXISTS refuse_at_commit ON refused;
CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON refused
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse();
TRUNCATE refused;
"""


async def test_commit_refused_for_privilege_is_not_taken_for_a_refused_do_block(
    db: asyncpg.Pool,
) -> None:
    # The error a refused DO block raises, raised by COMMIT itself (a deferred trigger's):
    # the transaction is over, rolled back; nothing is retried.
    await db.execute(REFUSED_AT_COMMIT)
    log: list[str] = []
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="refused at COMMIT"):
        async with hookbus_asyncpg.transaction(db) as tx:
            await tx.connection.execute("INSERT INTO refused VALUES (1)")
            tx.add(Recorded(log, "a"))
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]
    assert await ids(db, "refused") == []


# -- a spoofed or lost transaction id (defect 3) ---------------------------------------------


async def test_a_notice_from_a_trigger_cannot_pass_for_the_transaction_id(
    db: asyncpg.Pool,
) -> None:
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO committed_xid SELECT pg_current_xact_id()::text")
    log: list[str] = []
    async with holding_lock(db, LOCK):
        task, _, pid = await start_gated_commit(db, log, table="spoofed")  # both notices are sent
        assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(TransactionAbortedError, match="rolled transaction"):
            await task
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]
    assert await ids(db, "spoofed") == []


async def test_a_scope_that_only_notified_is_not_told_it_wrote_nothing(db: asyncpg.Pool) -> None:
    # A NOTIFY takes its transaction id during COMMIT: the notice sent just before COMMIT
    # says the transaction has none, yet that COMMIT is what delivers the notification.
    heard = asyncio.Event()

    def hear(*_: object) -> None:
        heard.set()

    async with db.acquire() as listener, db.acquire() as conn:
        await listener.add_listener("hookbus_only_notified", hear)
        notice = XidNotice()
        conn.add_log_listener(notice)
        await conn.execute("BEGIN; NOTIFY hookbus_only_notified")
        await conn.execute(notice.statement)  # the scope's COMMIT, the notice first
        await asyncio.wait_for(heard.wait(), 30)
        conn.remove_log_listener(notice)
        await listener.remove_listener("hookbus_only_notified", hear)
    assert notice.xid is None
    with pytest.raises(CommitOutcomeUnknownError) as lost:
        await find_outcome(notice.xid, OSError("lost"), TransactionOptions(), db)
    assert "wrote nothing" not in str(lost.value)
    assert "a NOTIFY it sent takes its id during COMMIT" in str(lost.value)


async def test_a_lost_transaction_id_is_not_told_as_no_write(db: asyncpg.Pool) -> None:
    # The client drops its side just after sending COMMIT, before reading anything: the id
    # has not arrived, whatever the server did. Bounded: the drop must win the race once.
    loop = asyncio.get_running_loop()
    for n in range(1, 51):
        log: list[str] = []

        def drop_after_commit_is_sent(
            tx: hookbus_asyncpg.AsyncpgTransaction, turns: int = n % 6
        ) -> None:
            # A few loop turns later: the scope's commit task starts, writes COMMIT, then
            # this (the number of turns varies from try to try).
            drop: Callable[[], object] = tx.connection.terminate
            for _ in range(turns):
                drop = functools.partial(loop.call_soon, drop)
            loop.call_soon(drop)

        async def noop() -> None:
            pass

        try:
            async with hookbus_asyncpg.transaction(db) as tx:
                await tx.connection.execute("INSERT INTO items VALUES ($1)", n)
                tx.add(Call(log, "precommit", noop))
                tx.add(Call(log, "precommit", lambda tx=tx: _async(drop_after_commit_is_sent, tx)))
        except CommitOutcomeUnknownError as exc:
            message = str(exc)
            if "before the transaction's id was received" in message:
                assert "wrote nothing" not in message
                assert "rollback" not in log and "postcommit" not in log
                return
        except (TransactionAbortedError, asyncpg.InterfaceError, OSError):
            pass  # the drop came first or last: the outcome was known; try again
    raise AssertionError("the id was never lost in 50 tries")


async def _async(func: Callable[..., None], *args: Any) -> None:
    func(*args)


# -- cancellation during BEGIN (defect 6) ----------------------------------------------------


@pytest.mark.parametrize("on", ["connection", "pool"])
async def test_cancelled_during_begin_leaves_no_transaction_open(
    db: asyncpg.Pool, conn: asyncpg.Connection, on: str
) -> None:
    loop = asyncio.get_running_loop()
    reports: list[str] = []
    loop.set_exception_handler(lambda _loop, context: reports.append(str(context["message"])))
    seed = secrets.randbits(32)
    rng = random.Random(seed)
    source: Any = conn if on == "connection" else db
    entered = cancelled = 0
    try:
        for _ in range(150):

            async def scope() -> None:
                nonlocal entered
                async with hookbus_asyncpg.transaction(source):
                    entered += 1

            task = asyncio.create_task(scope())
            for _ in range(rng.randrange(6)):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            cancelled += task.cancelled()
            if on == "connection":
                await conn.execute("SELECT 1")  # the state is read from the server's answer
                assert not conn.is_in_transaction(), f"seed {seed}"
    finally:
        loop.set_exception_handler(None)
    assert cancelled > 0 and entered > 0, f"seed {seed}: cancel {cancelled}, entered {entered}"
    assert not [r for r in reports if "active transaction" in r], f"seed {seed}: {reports}"
    idle = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND state LIKE 'idle in transaction%'"
    )
    assert await db.fetchval(idle) == 0


class Holding:
    """A TCP relay to PostgreSQL: once ``hold`` is set, what the server sends on the first
    connection (or what the client sends, ``to_server``) is held back (``held`` is then set)
    until ``release()``."""

    def __init__(self, dsn: str, *, to_server: bool = False) -> None:
        parts = urlsplit(dsn)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._to_server = to_server
        self.hold = False
        self.held = asyncio.Event()
        self._released = asyncio.Event()
        self._first = True

    def release(self) -> None:
        self._released.set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first, self._first = self._first, False
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, holds=first and self._to_server),
                self._pipe(up_reader, writer, holds=first and not self._to_server),
                return_exceptions=True,
            )
        finally:
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, holds: bool
    ) -> None:
        try:
            while data := await source.read(65536):
                if holds and self.hold:
                    self.held.set()
                    await self._released.wait()
                sink.write(data)
                await sink.drain()
        finally:
            sink.close()


@contextlib.asynccontextmanager
async def relayed(
    dsn: str, *, to_server: bool = False, pool_of_one: bool = False
) -> AsyncIterator[tuple[Holding, Any]]:
    """A connection through a ``Holding`` relay (``to_server``: the relay holds what the
    client sends), and the relay; with ``pool_of_one``, a pool of one connection instead
    (its first connection is the one the relay holds; terminated at the end, never closed,
    lest a connection it never got back hang the test)."""
    relay = Holding(dsn, to_server=to_server)
    server = await asyncio.start_server(relay.serve, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    if pool_of_one:
        source: Any = await asyncpg.create_pool(dsn, host=host, port=port, min_size=1, max_size=1)
    else:
        source = await asyncpg.connect(dsn, host=host, port=port)
    try:
        yield relay, source
    finally:
        relay.release()
        if pool_of_one:
            source.terminate()
        else:
            await source.close()
        server.close()


async def _enter_once(conn: asyncpg.Connection, entered: list[bool]) -> None:
    async with hookbus_asyncpg.transaction(conn):
        entered.append(True)


@pytest.mark.parametrize("cancellations", [1, 2])
async def test_cancelled_while_begin_is_answered_leaves_no_transaction_open(
    dsn: str, cancellations: int
) -> None:
    # The server has run BEGIN, its answer is on the way, and the scope is cancelled (then
    # again while it rolls back): the connection must end outside any transaction (what the
    # random test above looks for).
    entered: list[bool] = []
    async with relayed(dsn) as (relay, conn):
        relay.hold = True
        task = asyncio.create_task(_enter_once(conn, entered))
        await relay.held.wait()  # BEGIN ran on the server; its answer is held
        task.cancel()
        if cancellations == 2:  # again, once the scope sends ROLLBACK (waiting for BEGIN's end)
            await asyncio.sleep(0)
            task.cancel()
        relay.release()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not entered
        assert await conn.fetchval("SELECT 1") == 1  # the state is read from this answer
        assert not conn.is_in_transaction()


async def test_a_connection_lost_during_begin_raises_the_loss(dsn: str, db: asyncpg.Pool) -> None:
    # BEGIN is held on its way while the server ends the session: the scope is not entered,
    # and its caller sees the loss itself (the ROLLBACK tried after a failed BEGIN fails too).
    entered: list[bool] = []
    async with relayed(dsn, to_server=True) as (relay, conn):
        relay.hold = True
        task = asyncio.create_task(_enter_once(conn, entered))
        await relay.held.wait()  # BEGIN is held
        assert await db.fetchval("SELECT pg_terminate_backend($1, 5000)", conn.get_server_pid())
        with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError)):
            await task
        assert not entered


_LOST = (asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError)


async def test_a_begin_lost_on_a_pool_gives_the_connection_back_and_the_next_statement_begins(
    dsn: str, db: asyncpg.Pool
) -> None:
    # The pool has one connection; its BEGIN is held on its way while the server ends the
    # session. The statement that began raises the loss, the connection goes back to the pool,
    # and the scope's next statement takes one (the pool's only one) and begins afresh.
    async with relayed(dsn, to_server=True, pool_of_one=True) as (relay, pool):
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()

        async def scope() -> None:
            with anyio.fail_after(10):  # a connection never given back fails, never hangs
                async with hookbus_asyncpg.transaction(pool) as tx:
                    with pytest.raises(_LOST):
                        await tx.connection.execute("INSERT INTO items VALUES (1)")
                    await tx.connection.execute("INSERT INTO items VALUES (2)")

        relay.hold = True
        task = asyncio.create_task(scope())
        with anyio.fail_after(10):
            await relay.held.wait()  # BEGIN is held
        assert await db.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
        await task
    assert await ids(db) == [2]


async def test_a_begin_cancelled_on_a_pool_gives_the_connection_back(
    dsn: str, db: asyncpg.Pool
) -> None:
    async with relayed(dsn, pool_of_one=True) as (relay, pool):

        async def scope() -> None:
            async with hookbus_asyncpg.transaction(pool) as tx:
                await tx.connection.execute("INSERT INTO items VALUES (1)")

        relay.hold = True
        task = asyncio.create_task(scope())
        with anyio.fail_after(10):
            await relay.held.wait()  # BEGIN ran on the server; its answer is held
        task.cancel()
        relay.release()
        with anyio.fail_after(10), pytest.raises(asyncio.CancelledError):
            await task
        with anyio.fail_after(10):  # the pool's only connection is back: not a hang
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT 1") == 1
                assert not conn.is_in_transaction()
    assert await ids(db) == []


class _CancelAt(logging.Handler):
    """Cancels ``task`` when hookbus logs a record that starts with ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__(logging.DEBUG)
        self.message = message
        self.task: asyncio.Task[None] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.task is not None and record.getMessage().startswith(self.message):
            self.task.cancel()


async def test_a_cancellation_after_begin_failed_is_not_dropped(
    db: asyncpg.Pool, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    # BEGIN fails with an error (the server ended the session); the task is cancelled while
    # the scope makes sure no transaction is left open (the failed ROLLBACK's log record marks
    # that moment): the task ends cancelled, not with BEGIN's error.
    assert await db.fetchval("SELECT pg_terminate_backend($1, 5000)", conn.get_server_pid())
    entered: list[bool] = []
    cancel = _CancelAt("ROLLBACK after a failed BEGIN failed")
    caplog.set_level(logging.DEBUG, logger="hookbus")
    logging.getLogger("hookbus").addHandler(cancel)
    try:
        task = cancel.task = asyncio.create_task(_enter_once(conn, entered))
        with anyio.fail_after(10), pytest.raises(asyncio.CancelledError):
            await task
    finally:
        logging.getLogger("hookbus").removeHandler(cancel)
    assert task.cancelled() and not entered


async def test_commit_leaves_no_log_listener_on_a_connection_given(
    db: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    # COMMIT listens for the notice that carries the transaction's id, then stops: a
    # connection of the application's own keeps only its own listeners. (asyncpg shows its
    # listeners nowhere public: its _log_listeners set is read.)
    async with hookbus_asyncpg.transaction(conn):
        await conn.execute("INSERT INTO items VALUES (1)")
    assert not conn._log_listeners
    assert await ids(db) == [1]


async def test_a_scope_on_a_pool_gives_its_connection_back_before_postcommit(
    dsn: str, db: asyncpg.Pool
) -> None:
    # With COMMIT's outcome known, the connection is back in its pool before postcommit
    # runs: there, the pool's only connection can be taken.
    seen: list[int] = []
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)

    async def take_the_connection() -> None:
        with anyio.fail_after(10):  # a connection never given back fails, never hangs
            async with pool.acquire() as conn:
                seen.append(await conn.fetchval("SELECT 1"))

    try:
        async with hookbus_asyncpg.transaction(pool) as tx:
            await tx.connection.execute("INSERT INTO items VALUES (1)")
            tx.add(Call([], "postcommit", take_the_connection))
    finally:
        pool.terminate()  # (closing would wait for a connection never given back)
    assert seen == [1]
    assert await ids(db) == [1]


class HeldAfterBegin(asyncpg.Connection):  # type: ignore[misc]
    """A connection whose BEGIN, once the server has answered it, waits for ``held`` (set
    ``reached`` first): a scope's block can end while another of its tasks is beginning it."""

    reached: ClassVar[asyncio.Event | None] = None
    held: ClassVar[asyncio.Event | None] = None

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:  # noqa: ASYNC109 (asyncpg's)
        status: str = await super().execute(query, *args, timeout=timeout)
        if query == "BEGIN" and self.reached is not None and self.held is not None:
            self.reached.set()
            await self.held.wait()
        return status


async def test_a_scope_ended_while_its_task_is_beginning_it_gives_the_connection_back(
    dsn: str,
) -> None:
    # The block ends while a task it started is taking the connection and sending BEGIN
    # (the scope has not begun: it commits nothing). The scope gives that connection back
    # itself; the task's statement, run after the scope is over, is refused, never run.
    reached, held = asyncio.Event(), asyncio.Event()
    HeldAfterBegin.reached, HeldAfterBegin.held = reached, held
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1, connection_class=HeldAfterBegin)
    try:
        async with hookbus_asyncpg.transaction(pool) as tx:
            late = asyncio.create_task(tx.connection.execute("SELECT 1"))
            await reached.wait()
        assert tx.state is TransactionState.COMMITTED and not tx.begun
        held.set()
        with pytest.raises(TransactionStateError, match=r"cannot begin.* scope is committed"):
            await late
        assert not tx.begun
        await assert_pool_serves(pool)  # its one connection, out of any transaction
    finally:
        HeldAfterBegin.reached = HeldAfterBegin.held = None
        pool.terminate()


async def test_the_server_ending_the_session_before_commit_ran_is_a_rollback(
    db: asyncpg.Pool, dsn: str
) -> None:
    # COMMIT (with the notice that carries the id, sent before it) is held on its way; the
    # server ends the session meanwhile and says so (FATAL 57P01): COMMIT never ran.
    log: list[str] = []
    async with relayed(dsn, to_server=True) as (relay, conn):

        async def hold_what_follows() -> None:
            relay.hold = True

        async def scope() -> None:
            async with hookbus_asyncpg.transaction(conn) as tx:
                await conn.execute("INSERT INTO items VALUES (1)")
                tx.add(Recorded(log, "a"))
                tx.add(Call([], "precommit", hold_what_follows))

        task = asyncio.create_task(scope())
        await relay.held.wait()  # the COMMIT statement is held
        assert await db.fetchval("SELECT pg_terminate_backend($1, 5000)", conn.get_server_pid())
        with pytest.raises(TransactionAbortedError, match="ended the session before COMMIT"):
            await task
    assert log == ["a.precommit", "a.revertprecommit", "a.rollback"]
    assert await ids(db) == []


# -- SQL in a savepoint name (defect 7) ------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["sp; DROP TABLE victim", 'sp"; DROP TABLE victim; --', "", "1sp", "s" * 64, None]
)
async def test_a_savepoint_name_that_is_not_a_plain_identifier_is_refused(
    db: asyncpg.Pool, name: Any
) -> None:
    async with hookbus_asyncpg.transaction(db) as tx:
        await tx.connect()  # the scope begins lazily: begin it before driving its backend
        backend = tx.backend
        assert isinstance(backend, hookbus_asyncpg.AsyncpgBackend)
        for send in (backend.savepoint, backend.release, backend.rollback_to):
            with pytest.raises(ValueError, match="plain identifier"):
                await send(name)
        await backend.savepoint("Mixed_Case_1")  # quoted, and kept as written
        await backend.rollback_to("Mixed_Case_1")
    assert await ids(db, "victim") == [1]


# -- nested scopes (defect 12) ---------------------------------------------------------------


async def test_a_nested_scope_joins_and_rolls_back_with_the_outer_one(db: asyncpg.Pool) -> None:
    log: list[str] = []
    with pytest.raises(RuntimeError, match="outer fails"):
        async with hookbus_asyncpg.transaction(db) as outer:
            await outer.connection.execute("INSERT INTO items VALUES (1)")
            async with hookbus_asyncpg.transaction(db) as inner:
                assert inner is outer
                await inner.connection.execute("INSERT INTO items VALUES (2)")
                inner.add(Recorded(log, "inner"))
            assert log == []  # the inner block's end committed nothing
            raise RuntimeError("outer fails")
    assert log == ["inner.rollback"]
    assert await ids(db) == []


async def test_a_nested_scope_that_fails_rolls_back_to_its_savepoint(db: asyncpg.Pool) -> None:
    log: list[str] = []
    async with hookbus_asyncpg.transaction(db) as outer:
        await outer.connection.execute("INSERT INTO items VALUES (1)")
        outer.add(Recorded(log, "outer"))
        with pytest.raises(RuntimeError, match="inner fails"):
            # Given the outer scope's connection: it joins the same way.
            async with hookbus_asyncpg.transaction(outer.connection) as inner:
                await inner.connection.execute("INSERT INTO items VALUES (2)")
                inner.add(Recorded(log, "inner"))
                raise RuntimeError("inner fails")
        assert log == ["inner.rollback"]
    assert log == ["inner.rollback", "outer.precommit", "outer.postcommit"]
    assert await ids(db) == [1]


async def test_an_independent_scope_commits_on_its_own(db: asyncpg.Pool) -> None:
    log: list[str] = []
    with pytest.raises(RuntimeError, match="outer fails"):
        async with hookbus_asyncpg.transaction(db) as outer:
            await outer.connection.execute("INSERT INTO items VALUES (1)")
            async with hookbus_asyncpg.transaction(db, independent=True) as inner:
                assert inner is not outer
                assert inner.connection is not outer.connection
                await inner.connection.execute("INSERT INTO items VALUES (2)")
                inner.add(Recorded(log, "inner"))
            assert log == ["inner.precommit", "inner.postcommit"]
            raise RuntimeError("outer fails")
    assert await ids(db) == [2]


async def test_a_scope_on_another_source_inside_a_scope_is_a_transaction_of_its_own(
    db: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    # Only a scope on the open scope's pool or connection joins it: one on another
    # connection (or pool) in the same task commits on its own.
    with pytest.raises(RuntimeError, match="outer fails"):
        async with hookbus_asyncpg.transaction(db) as outer:
            await outer.connection.execute("INSERT INTO items VALUES (1)")
            async with hookbus_asyncpg.transaction(conn) as inner:
                assert inner is not outer
                await conn.execute("INSERT INTO items VALUES (2)")
            raise RuntimeError("outer fails")
    assert await ids(db) == [2]


async def test_a_nested_scope_cannot_change_the_transaction_it_joins(db: asyncpg.Pool) -> None:
    async with hookbus_asyncpg.transaction(db) as outer:
        with pytest.raises(ValueError, match=r"isolation='serializable'.*independent=True"):
            async with hookbus_asyncpg.transaction(db, isolation="serializable"):
                pass
        with pytest.raises(TransactionStateError, match="pass the pool"):
            async with hookbus_asyncpg.transaction(outer.connection, independent=True):
                pass
        await outer.connection.execute("INSERT INTO items VALUES (1)")
    assert await ids(db) == [1]


async def test_a_scope_opened_by_an_operation_joins_at_precommit_not_after(
    db: asyncpg.Pool,
) -> None:
    seen: list[str] = []

    async def write(n: int) -> None:
        async with hookbus_asyncpg.transaction(db) as tx:
            seen.append(tx.state.value)
            await tx.connection.execute("INSERT INTO items VALUES ($1)", n)

    async with hookbus_asyncpg.transaction(db) as tx:
        tx.add(Call([], "precommit", lambda: write(1)))  # joins: commits with the scope
        tx.add(Call([], "postcommit", lambda: write(2)))  # the scope is over: one of its own
    assert seen == ["precommitting", "active"]
    assert await ids(db) == [1, 2]


async def test_a_scope_opened_in_another_task_is_a_transaction_of_its_own(
    db: asyncpg.Pool,
) -> None:
    async def child(n: int) -> None:
        async with hookbus_asyncpg.transaction(db) as tx:
            await tx.connection.execute("INSERT INTO items VALUES ($1)", n)

    with pytest.raises(RuntimeError, match="outer fails"):
        async with hookbus_asyncpg.transaction(db) as outer:
            await asyncio.create_task(child(1))  # two tasks cannot share one connection
            with pytest.raises(TransactionStateError, match="runs an open scope"):
                await asyncio.create_task(_enter(outer.connection))
            raise RuntimeError("outer fails")
    assert await ids(db) == [1]


async def _enter(source: Any) -> None:
    async with hookbus_asyncpg.transaction(source):
        pass


async def test_a_transaction_context_is_entered_once(db: asyncpg.Pool) -> None:
    scope = hookbus_asyncpg.transaction(db)
    async with scope:
        pass
    with pytest.raises(RuntimeError, match="entered once"):
        async with scope:
            pass


async def test_the_connection_of_a_scope_that_never_began_is_refused_once_it_is_over(
    db: asyncpg.Pool,
) -> None:
    async with hookbus_asyncpg.transaction(db) as tx:
        stand_in = tx.connection  # no statement yet: it stands for the connection to come
    with pytest.raises(TransactionStateError, match="scope that is over"):
        async with hookbus_asyncpg.transaction(stand_in):
            pass
    assert await ids(db) == []


async def test_a_connection_in_a_transaction_of_its_own_is_refused(
    db: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    async with conn.transaction():
        with pytest.raises(TransactionStateError, match="hookbus did not open"):
            async with hookbus_asyncpg.transaction(conn):
                pass


# -- the driver's own transaction inside a scope (newcomer friction) -------------------------


async def test_connection_transaction_inside_a_scope_points_to_savepoint(
    db: asyncpg.Pool,
) -> None:
    with pytest.raises(asyncpg.InterfaceError) as raised:
        async with hookbus_asyncpg.transaction(db) as tx:
            await tx.connect()  # the scope has its connection: tx.connection is it
            async with hookbus_asyncpg.transaction(db), tx.connection.transaction():
                pass
    notes = getattr(raised.value, "__notes__", [])
    assert len(notes) == 1  # once, though two scopes saw it go by
    assert "tx.savepoint()" in notes[0]
    assert "hookbus_asyncpg.transaction(pool)" in notes[0]


# -- options, checked once where transaction() is called -------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"isolation": "snapshot"}, ValueError, "isolation must be one of"),
        ({"readonly": "yes"}, TypeError, "readonly must be True or False"),
        ({"independent": 1}, TypeError, "independent must be True or False"),
        ({"outcome_timeout": 0}, ValueError, "outcome_timeout"),
        ({"outcome_timeout": True}, ValueError, "outcome_timeout"),
        ({"recovery_pool": "pool"}, TypeError, "recovery_pool"),
    ],
)
async def test_bad_options_fail_where_transaction_is_called(
    pool: asyncpg.Pool, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        hookbus_asyncpg.transaction(pool, **options)


@pytest.mark.parametrize(
    ("good", "bad", "error"),
    [
        ({"readonly": True}, {"readonly": 1}, TypeError),
        ({"deferrable": True}, {"deferrable": 1}, TypeError),
        ({"find_outcome": False}, {"find_outcome": 0}, TypeError),
        ({"independent": True}, {"independent": 1}, TypeError),
        ({"outcome_timeout": 1.0}, {"outcome_timeout": True}, ValueError),
        # Equal to a default (checked before any call) or to an int timeout given before.
        ({}, {"readonly": 0}, TypeError),
        ({}, {"deferrable": 0}, TypeError),
        ({}, {"find_outcome": 1}, TypeError),
        ({}, {"independent": 0}, TypeError),
        ({"outcome_timeout": 1}, {"outcome_timeout": True}, ValueError),
    ],
)
async def test_a_bad_option_equal_to_a_good_one_is_still_refused(
    pool: asyncpg.Pool, good: dict[str, Any], bad: dict[str, Any], error: type[Exception]
) -> None:
    # 1 == True and True == 1.0: options checked once per set must not let the bad value
    # pass for the good one checked before.
    hookbus_asyncpg.transaction(pool, **good)
    with pytest.raises(error, match=next(iter(bad))):
        hookbus_asyncpg.transaction(pool, **bad)


@pytest.mark.parametrize(
    "given",
    [
        {"isolation": "serializable"},
        {"readonly": True},
        {"deferrable": True},
        {"outcome_timeout": 0.25},
        {"find_outcome": False},
        {"independent": True},
        {"recovery_pool": "pool"},
    ],
)
async def test_each_option_given_is_the_scope_s_and_the_next_scope_has_its_own(
    pool: asyncpg.Pool, given: dict[str, Any]
) -> None:
    if given.get("recovery_pool") == "pool":
        given = {"recovery_pool": pool}
    (name, value), default = next(iter(given.items())), hookbus_asyncpg.TransactionOptions()
    for options in ({}, given, {}, given):
        async with hookbus_asyncpg.transaction(pool, **options) as tx:  # begins at no statement
            assert getattr(tx.options, name) == (value if options else getattr(default, name))


def test_options_are_one_immutable_object() -> None:
    options = hookbus_asyncpg.TransactionOptions(isolation="serializable", readonly=True)
    assert options.begin == "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY"
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.readonly = False  # type: ignore[misc]
    with pytest.raises(TypeError, match="asyncpg pool or connection"):
        hookbus_asyncpg.transaction("postgresql://")  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def hookbus_pool(pool: asyncpg.Pool) -> asyncpg.Pool:
    """Test mode (the plugin's ``hookbus_db``) on this module's database."""
    return pool


async def test_a_scope_in_test_mode_keeps_its_options(hookbus_db: Any) -> None:
    # Its savepoint cannot apply them, but the scope has them, and a nested scope that would
    # change them is refused as outside test mode.
    pool = hookbus_db.pool
    async with hookbus_asyncpg.transaction(pool, isolation="serializable", readonly=True) as tx:
        assert (tx.options.isolation, tx.options.readonly) == ("serializable", True)
        with pytest.raises(ValueError, match=r"deferrable=True.*independent=True"):
            async with hookbus_asyncpg.transaction(pool, deferrable=True):
                pass


async def test_in_test_mode_a_nested_scope_keeps_its_work_or_rolls_it_back(
    db: asyncpg.Pool, hookbus_db: Any
) -> None:
    # A nested scope's savepoint (one inside the scope's own) is released: its row and its
    # operation stay with the outer scope, whose "COMMIT" (a RELEASE) runs them; one whose
    # block raises is rolled back to.
    log: list[str] = []
    async with hookbus_asyncpg.transaction(hookbus_db.pool) as tx:
        await tx.connection.execute("INSERT INTO items VALUES (1)")
        async with hookbus_asyncpg.transaction(hookbus_db.pool) as inner:
            assert inner is tx
            await inner.connection.execute("INSERT INTO items VALUES (2)")
            inner.add(Recorded(log, "inner"))
        assert log == []
        with pytest.raises(RuntimeError, match="undone"):  # one that fails is rolled back
            async with hookbus_asyncpg.transaction(hookbus_db.pool) as undone:
                await undone.connection.execute("INSERT INTO items VALUES (3)")
                undone.add(Recorded(log, "undone"))
                raise RuntimeError("undone")
        assert log == ["undone.rollback"]
    assert log == ["undone.rollback", "inner.precommit", "inner.postcommit"]
    assert await ids(hookbus_db.connection) == [1, 2]
    assert await ids(db) == []  # the test's transaction: nothing committed


async def test_in_test_mode_a_postcommit_error_is_recorded_for_the_test(hookbus_db: Any) -> None:
    log: list[str] = []
    async with hookbus_asyncpg.transaction(hookbus_db.pool) as tx:
        tx.add(Recorded(log, "p", fail="postcommit"))
    assert log == ["p.precommit", "p.postcommit"]  # logged, not raised, as in production
    [error] = hookbus_db.take_postcommit_errors()  # taken: it does not fail this test
    assert str(error) == "p failed in postcommit"
    assert hookbus_db.postcommit_errors == []


async def test_options_reach_begin_and_the_scope(db: asyncpg.Pool) -> None:
    async with hookbus_asyncpg.transaction(db, isolation="repeatable_read", readonly=True) as tx:
        assert tx.options.readonly is True
        level = await tx.connection.fetchval("SHOW transaction_isolation")
        assert level == "repeatable read"
        assert await tx.connection.fetchval("SHOW transaction_read_only") == "on"
