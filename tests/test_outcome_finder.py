"""The outcome of a COMMIT whose connection was lost, asked of PostgreSQL on another one.

A scope's COMMIT is held in flight by a deferred trigger waiting for an advisory lock the test
holds; the test then drops the scope's connection on the client side (the server carries on)
and watches the finder ask ``recovery_pool``, whose connections tell the test (a query logger)
each time they have asked a transaction's status. Issue 14's guards: the finder giving up when
the connection it asks on is lost too; polling on after PostgreSQL has answered; the deadline.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import hookbus_asyncpg
import pytest
import pytest_asyncio
from _postgres import (
    assert_pool_hands_out_everything,
    gate_at_commit,
    ids,
    wait_until_blocked_on_lock,
)
from _recording import Recorded

from hookbus import CommitOutcomeUnknownError

LOCK = 1515  # the advisory lock the table `gated` takes at COMMIT
# A bound on what takes milliseconds once PostgreSQL can answer: only a finder that polls on to
# its deadline (DEADLINE) reaches it. (The scope's COMMIT is awaited to its outcome whatever
# cancels it: the bound is waited for with asyncio.wait, never by cancelling the scope.)
BOUND = 20.0
DEADLINE = 3 * BOUND

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS gated (id int);
{gate_at_commit("gated", LOCK)}
TRUNCATE gated;
"""


@pytest_asyncio.fixture
async def db(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    await pool.execute(SCHEMA)
    yield pool
    await assert_pool_hands_out_everything(pool)


class Asked:
    """The server pids of the recovery pool's connections, each time one asks a status."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self._changed = asyncio.Event()

    def saw(self, pid: int) -> None:
        self.pids.append(pid)
        self._changed.set()

    async def wait(self, count: int = 1) -> int:
        """Wait until ``count`` asks were made; return the pid of the last."""
        async with asyncio.timeout(BOUND):
            while True:
                pids = self.pids
                if len(pids) >= count:
                    return pids[-1]
                self._changed.clear()
                await self._changed.wait()


async def watch(connection: asyncpg.Connection, asked: Asked) -> None:
    """Tell ``asked`` of each statement asking ``pg_xact_status`` on ``connection``, once it
    has its answer (asyncpg's query logger sees every statement, however it is sent)."""
    pid = connection.get_server_pid()

    def logged(query: asyncpg.connection.LoggedQuery) -> None:
        if "pg_xact_status" in query.query:
            asked.saw(pid)

    connection.add_query_logger(logged)


@pytest.fixture
def asked() -> Asked:
    return Asked()


@pytest_asyncio.fixture
async def recovery(dsn: str, asked: Asked) -> AsyncIterator[asyncpg.Pool]:
    """The pool the finder asks on, one connection at a time; its asks go to ``asked``."""
    async with asyncpg.create_pool(
        dsn, min_size=1, max_size=1, init=functools.partial(watch, asked=asked)
    ) as pool:
        yield pool


async def ends_within_bound(task: asyncio.Task[None]) -> bool:
    """Await ``task``; tell whether it had ended within ``BOUND`` seconds."""
    done, _ = await asyncio.wait({task}, timeout=BOUND)
    await task
    return bool(done)


async def lost_commit(
    db: asyncpg.Pool, recovery: asyncpg.Pool, log: list[str], outcome_timeout: float
) -> asyncio.Task[None]:
    """Start a scope whose COMMIT waits on ``LOCK`` (held by the caller), drop its connection
    on the client side once it waits, and return its task: its finder is now asking."""
    started: asyncio.Queue[hookbus_asyncpg.AsyncpgTransaction] = asyncio.Queue()

    async def scope() -> None:
        async with hookbus_asyncpg.transaction(
            db, recovery_pool=recovery, outcome_timeout=outcome_timeout
        ) as tx:
            await tx.connection.execute("INSERT INTO gated VALUES (1)")
            tx.add(Recorded(log, "a"))
            started.put_nowait(tx)

    task = asyncio.create_task(scope())
    tx = await started.get()
    await wait_until_blocked_on_lock(db, tx.connection.get_server_pid())
    tx.connection.terminate()  # the client side drops; the server's COMMIT carries on
    return task


async def test_the_finder_stops_asking_once_postgresql_answers(
    db: asyncpg.Pool, recovery: asyncpg.Pool, asked: Asked, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    async with db.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK)
        task = await lost_commit(db, recovery, log, outcome_timeout=DEADLINE)
        await asked.wait(2)  # it was told "in progress", and asks again
        await holder.execute("SELECT pg_advisory_unlock($1)", LOCK)
        with caplog.at_level(logging.WARNING, logger="hookbus"):
            assert await ends_within_bound(task), "the finder asked on after the answer"
    assert log == ["a.precommit", "a.postcommit"]
    assert await ids(db, "gated") == [1]
    assert "committed" in caplog.text


class Cutter:
    """A TCP relay to PostgreSQL: once ``armed``, it cuts the next connection that sends a
    message (a query, then), both ways, without passing it on: the network fails mid-query."""

    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.armed = False
        self.cut = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, cutting=True),
                self._pipe(up_reader, writer, cutting=False),
            )
        except OSError:
            pass  # cut
        finally:
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, cutting: bool
    ) -> None:
        while data := await source.read(65536):
            if cutting and self.armed:
                self.armed = False
                self.cut += 1
                raise ConnectionAbortedError("cut")
            sink.write(data)
            await sink.drain()
        raise ConnectionResetError("closed")  # one side closed: close the other


async def test_the_finder_asks_again_when_its_own_connection_is_lost(
    db: asyncpg.Pool, dsn: str, asked: Asked
) -> None:
    # The network between the finder and PostgreSQL fails during its first ask: a loss of
    # the connection asked on (which the pool could not see before handing it out).
    cutter = Cutter(dsn)
    relay = await asyncio.start_server(cutter.serve, "127.0.0.1", 0)
    host, port = relay.sockets[0].getsockname()[:2]
    log: list[str] = []
    try:
        async with (
            asyncpg.create_pool(
                dsn,
                host=host,
                port=port,
                min_size=1,
                max_size=1,
                init=functools.partial(watch, asked=asked),
            ) as recovery,
            db.acquire() as holder,
        ):
            await holder.execute("SELECT pg_advisory_lock($1)", LOCK)
            cutter.armed = True  # the recovery pool's next message is the finder's first ask
            task = await lost_commit(db, recovery, log, outcome_timeout=DEADLINE)
            asking = asyncio.ensure_future(asked.wait())  # it asks again: "in progress"
            try:
                await asyncio.wait({task, asking}, return_when=asyncio.FIRST_COMPLETED)
                await holder.execute("SELECT pg_advisory_unlock($1)", LOCK)
                assert await ends_within_bound(task), "the finder asked on after the answer"
                assert asking.done(), "the finder gave up when its connection was lost"
                await asking
            finally:
                asking.cancel()
    finally:
        relay.close()
    assert cutter.cut == 1
    assert log == ["a.precommit", "a.postcommit"]
    assert await ids(db, "gated") == [1]


async def test_the_finder_gives_up_at_its_deadline(
    db: asyncpg.Pool, recovery: asyncpg.Pool
) -> None:
    log: list[str] = []
    async with db.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK)
        task = await lost_commit(db, recovery, log, outcome_timeout=0.5)
        # Still in progress (the lock is held) when the deadline passes.
        done, _ = await asyncio.wait({task}, timeout=BOUND)
        await holder.execute("SELECT pg_advisory_unlock($1)", LOCK)
        assert done, "the finder asked on past its deadline"
        with pytest.raises(CommitOutcomeUnknownError, match="in progress"):
            await task
    assert log == ["a.precommit"]  # neither postcommit nor rollback: the outcome is unknown
