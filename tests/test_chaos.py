"""Chaos: many scopes under random cancellations, timeouts and backend terminations.

Each scope inserts a row with its own id (half of them reading their transaction id from the
INSERT, as the store does, and committing plainly) and schedules an operation that records
its phases;
faults land at random points (BEGIN, the body, precommit, COMMIT, postcommit, the release).
Afterwards: the pool is whole, no session is left idle in transaction, postcommit ran exactly
once for each committed row and never for another, rollback ran only for rows not committed,
and what each caller saw is true. Every fault is real (``task.cancel()``, ``asyncio.timeout``,
``pg_terminate_backend`` of the scope's own backend from another connection), bounded in count
and time, on the test server only. A termination lands only on the scope's own transaction:
the backend is terminated only while ``pg_stat_activity`` shows it running the scope's
transaction id (behind pgbouncer in transaction pooling, the backend a scope ran on may
already run another client's transaction).

Counts come from the environment (CI defaults: 200 scopes, 20 terminations); ``./run chaos``
runs 5,000. ``HOOKBUS_CHAOS_SEED`` replays a run: the seed is printed, and named in every
failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import hookbus_asyncpg
import pytest_asyncio

import hookbus
from hookbus import CommitOutcomeUnknownError

SCOPES = int(os.environ.get("HOOKBUS_CHAOS_SCOPES", "200"))
TERMINATIONS = int(os.environ.get("HOOKBUS_CHAOS_TERMINATIONS", "20"))
CONCURRENCY = int(os.environ.get("HOOKBUS_CHAOS_CONCURRENCY", "8"))
SEED = int(os.environ.get("HOOKBUS_CHAOS_SEED") or secrets.randbits(32))
POOL_SIZE = 4
UNKNOWN: list[str] = []  # what each unknown outcome was, for the failure message
DEADLINE = 30.0 + SCOPES * 0.05  # seconds, for the whole run: a hang fails, never blocks

SCHEMA = """
DROP TABLE IF EXISTS chaos;
CREATE TABLE chaos (id int PRIMARY KEY, slow boolean NOT NULL);
-- A slow row makes its COMMIT last a few milliseconds: terminations land inside it.
CREATE OR REPLACE FUNCTION chaos_slow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.slow THEN
        PERFORM pg_sleep(0.004);
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER chaos_slow_at_commit AFTER INSERT ON chaos
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION chaos_slow();
"""


@dataclasses.dataclass
class Scope:
    """One scope's plan, what its operation saw, and what its caller saw."""

    id: int
    fault: str  # "none", "cancel", "timeout", "terminate-body", "terminate-commit"
    slow: bool
    delay: float
    phases: list[str] = dataclasses.field(default_factory=list)
    scheduled: bool = False
    outcome: BaseException | None = None
    # Its backend's pid and its transaction's id, both asked inside its transaction.
    target: asyncio.Future[tuple[int, str]] | None = None
    committing: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    killed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    terminated: bool = False  # its killer terminated its backend inside its transaction
    returning: bool = False  # it told hookbus its transaction's id (from its INSERT)
    finished: bool = False


class Record(hookbus.Operation):
    """Records the phases it runs in its scope's ``phases``; tells the killer at precommit."""

    def __init__(self, scope: Scope) -> None:
        super().__init__()
        self.scope = scope

    async def precommit(self) -> None:
        self.scope.phases.append("precommit")
        self.scope.committing.set()

    async def revertprecommit(self) -> None:
        self.scope.phases.append("revertprecommit")

    async def rollback(self) -> None:
        self.scope.phases.append("rollback")

    async def postcommit(self) -> None:
        self.scope.phases.append("postcommit")


@pytest_asyncio.fixture
async def chaos_pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    # ssl=False: asyncpg's cancel requests otherwise leave "Future exception was never
    # retrieved" noise from their SSL negotiation (the server is on loopback).
    async with asyncpg.create_pool(dsn, min_size=1, max_size=POOL_SIZE, ssl=False) as pool:
        await pool.execute(SCHEMA)
        yield pool


def plan(rng: random.Random) -> list[Scope]:
    # Half as many again: a termination planned around COMMIT misses when the COMMIT was
    # quicker than its delay (the test checks that at least TERMINATIONS landed).
    terminated = set(rng.sample(range(SCOPES), min(TERMINATIONS * 3 // 2, SCOPES)))
    scopes = []
    for i in range(SCOPES):
        if i in terminated:
            fault = rng.choice(["terminate-body", "terminate-commit", "terminate-commit"])
            slow, delay = fault == "terminate-commit" or rng.random() < 0.5, 0.005
        else:
            fault = rng.choices(["none", "cancel", "timeout"], weights=[2, 3, 3])[0]
            slow, delay = rng.random() < 0.5, 0.008
        scopes.append(Scope(i, fault, slow=slow, delay=rng.uniform(0, delay)))
    return scopes


async def run_scope(pool: asyncpg.Pool, scope: Scope, rng: random.Random) -> None:
    """The scope as a caller writes it, with its fault planted."""
    sleeps = rng.randrange(3)
    add_first = rng.random() < 0.5
    # Half the scopes read their transaction id from their write (as the store's inserts
    # do): their COMMIT is plain; the others' carries the id in a notice.
    returning = scope.returning = rng.random() < 0.5

    async def body() -> None:
        async with hookbus_asyncpg.transaction(pool) as tx:
            conn = await tx.connect()  # BEGIN now (a lazy scope begins at its first statement)
            if add_first:
                tx.add(Record(scope))
                scope.scheduled = True
            if scope.target is not None:
                # The server's own pid and the transaction's id (assigned here), asked inside
                # the transaction (behind pgbouncer, get_server_pid() is pgbouncer's, and names
                # no backend): the killer terminates that backend only while it runs this
                # transaction. The scope does not tell hookbus this id: it finds it as usual.
                pid, own_xid = await conn.fetchrow(
                    "SELECT pg_backend_pid(), pg_current_xact_id()::text"
                )
                scope.target.set_result((pid, own_xid))
            if returning:
                xid = await conn.fetchval(
                    "INSERT INTO chaos VALUES ($1, $2) RETURNING pg_current_xact_id()::text",
                    scope.id,
                    scope.slow,
                )
                tx.note_transaction_id(xid)
            else:
                await conn.execute("INSERT INTO chaos VALUES ($1, $2)", scope.id, scope.slow)
            if scope.fault == "terminate-body":
                await scope.killed.wait()
            for _ in range(sleeps):
                await asyncio.sleep(0)
            if not add_first:
                tx.add(Record(scope))
                scope.scheduled = True

    try:
        if scope.fault == "timeout":
            async with asyncio.timeout(scope.delay):
                await body()
        else:
            await body()
    except BaseException as exc:
        scope.outcome = exc
    finally:
        scope.finished = True


# Terminates the backend only while it runs the scope's transaction, in one statement: behind
# pgbouncer (transaction pooling) the scope's backend goes to another client's transaction
# as soon as the scope's ends. backend_xid is an xid (32 bits), the id asked an xid8: xid()
# takes its low 32 bits. A transaction that has ended shows no backend_xid, or another one.
TERMINATE_OWN = """
SELECT pg_terminate_backend(pid) FROM pg_stat_activity
WHERE pid = $1 AND backend_xid = xid($2::text::xid8)
"""


async def kill(admin: asyncpg.Pool, scope: Scope, counts: Counter[str]) -> None:
    """Terminate the scope's own transaction's backend: in its body, or around its COMMIT."""
    assert scope.target is not None
    try:
        pid, xid = await scope.target
        if scope.fault == "terminate-commit":
            await scope.committing.wait()
            await asyncio.sleep(scope.delay)
        if not scope.finished and await admin.fetchval(TERMINATE_OWN, pid, xid):
            scope.terminated = True
            counts["terminations"] += 1
            counts[scope.fault] += 1
    finally:
        scope.killed.set()


async def run_one(
    pool: asyncpg.Pool, admin: asyncpg.Pool, scope: Scope, seed: int, counts: Counter[str]
) -> None:
    rng = random.Random(seed)
    killer = None
    if scope.fault.startswith("terminate"):
        scope.target = asyncio.get_running_loop().create_future()
        killer = asyncio.create_task(kill(admin, scope, counts))
    task = asyncio.create_task(run_scope(pool, scope, rng))
    if scope.fault == "cancel":
        await asyncio.sleep(scope.delay)
        if not task.done():
            task.cancel()
            counts["cancellations"] += 1
    await task
    if killer is not None:
        killer.cancel()  # a killer still waiting: its scope ended before the planned point
        await asyncio.gather(killer, return_exceptions=True)


async def test_chaos(chaos_pool: asyncpg.Pool, dsn: str) -> None:
    print(f"\nchaos: seed {SEED} (HOOKBUS_CHAOS_SEED={SEED} replays it)")
    rng = random.Random(SEED)
    scopes = plan(rng)
    counts: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    reports: list[str] = []
    loop.set_exception_handler(lambda _loop, context: reports.append(str(context["message"])))
    started = time.monotonic()
    limit = asyncio.Semaphore(CONCURRENCY)

    async def guarded(scope: Scope, seed: int) -> None:
        async with limit:
            await run_one(chaos_pool, admin, scope, seed, counts)

    try:
        async with (
            asyncpg.create_pool(dsn, min_size=1, max_size=2) as admin,
            asyncio.timeout(DEADLINE),
        ):
            seeds = [rng.randrange(2**32) for _ in scopes]
            await asyncio.gather(*(guarded(s, n) for s, n in zip(scopes, seeds, strict=True)))
            # A termination planned around COMMIT misses when the COMMIT was quicker: top up
            # with terminations in the body, which always land, up to the planned count.
            planned = counts["terminations"]
            for _ in range(TERMINATIONS):
                if counts["terminations"] >= min(TERMINATIONS, SCOPES):
                    break
                scopes.append(Scope(len(scopes), "terminate-body", slow=False, delay=0.0))
                await run_one(chaos_pool, admin, scopes[-1], rng.randrange(2**32), counts)
    finally:
        loop.set_exception_handler(None)
    duration = time.monotonic() - started

    await assert_pool_whole(chaos_pool)
    idle = await chaos_pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND state LIKE 'idle in transaction%'"
    )
    assert idle == 0, f"seed {SEED}: {idle} sessions idle in transaction"
    assert not [r for r in reports if "active transaction" in r], f"seed {SEED}: {reports}"

    committed = {r[0] for r in await chaos_pool.fetch("SELECT id FROM chaos")}
    for scope in scopes:
        check(scope, scope.id in committed, counts)
    counts["timeouts"] = sum(isinstance(s.outcome, TimeoutError) for s in scopes)
    print(
        f"chaos: {len(scopes)} scopes in {duration:.1f} s; {counts['terminations']} terminations, "
        f"{counts['cancellations']} cancellations, {counts['timeouts']} timeouts; "
        f"{counts['committed']} committed, {counts['rolled back']} rolled back, "
        f"{counts['unknown']} unknown ({counts['unknown behind pgbouncer']} of them behind "
        f"pgbouncer, the server's report of a termination replaced by pgbouncer's)\n"
        f"chaos: terminations: {counts['terminate-commit']} around COMMIT and "
        f"{counts['terminate-body'] - (counts['terminations'] - planned)} in the body as "
        f"planned, {counts['terminations'] - planned} in the body to top up"
    )
    assert counts["terminations"] >= min(TERMINATIONS, SCOPES), f"seed {SEED}: {counts}"
    assert counts["committed"] and counts["rolled back"], f"seed {SEED}: {counts}"
    # Every loss here is a termination the server reports (FATAL 57P01, before or after the
    # transaction's id): the outcome can always be found, so none may be unknown; but behind
    # pgbouncer, where the server's report may not reach hookbus (check()).
    assert counts["unknown"] == counts["unknown behind pgbouncer"], f"seed {SEED}: {UNKNOWN}"


def check(scope: Scope, committed: bool, counts: Counter[str]) -> None:
    """Assert that what the scope's operation and caller saw is true of its row."""
    where = f"seed {SEED}, scope {scope.id} ({scope.fault}): {scope.phases}, {scope.outcome!r}"
    outcome, phases = scope.outcome, scope.phases
    assert phases.count("postcommit") == (1 if committed else 0), where
    assert phases.count("rollback") <= 1, where
    if isinstance(outcome, CommitOutcomeUnknownError):
        # Only where the outcome could not be found; and then neither callback ran.
        counts["unknown"] += 1
        UNKNOWN.append(f"{where}, cause {outcome.__cause__!r}, committed {committed}")
        assert "wrote nothing" not in str(outcome), where
        assert phases == ["precommit"], where
        if replaced_by_pgbouncer(scope, outcome):
            # The server ended the session before the notice that comes before COMMIT: COMMIT
            # never ran.
            assert not committed, where
            counts["unknown behind pgbouncer"] += 1
        return
    cancelled = isinstance(outcome, asyncio.CancelledError | TimeoutError)
    if committed:
        counts["committed"] += 1
        assert "rollback" not in phases, where
        # No exception for a committed row, but a cancellation the caller asked for itself,
        # which is re-raised once the COMMIT and its postcommit are done.
        assert outcome is None or (cancelled and scope.fault in ("cancel", "timeout")), where
    else:
        counts["rolled back"] += 1
        assert outcome is not None, where
        assert phases.count("rollback") == (1 if scope.scheduled else 0), where


# pgbouncer's own error when the server's session ends under a client (SQLSTATE 08P01).
PGBOUNCER_LOST = "server conn crashed?"


def replaced_by_pgbouncer(scope: Scope, outcome: CommitOutcomeUnknownError) -> bool:
    """Tell an unknown outcome that only pgbouncer causes: the scope's own backend terminated
    (by its killer, inside its transaction) before COMMIT's notice, in a scope that did not
    tell hookbus its transaction's id.

    Directly, the server's FATAL 57P01 ends the connection, and hookbus reads it: the session
    ended before COMMIT ran. Behind pgbouncer (1.18, transaction pooling) the client gets that
    FATAL, then pgbouncer's own FATAL 08P01 "server conn crashed?", and asyncpg keeps only the
    last error it read: hookbus sees a connection lost on the way, after which COMMIT may have
    run, and without the transaction's id it cannot ask. A scope that told its id is asked
    about (``pg_xact_status``) and never unknown.
    """
    lost = outcome.__cause__  # asyncpg's ConnectionDoesNotExistError, from the last error read
    last = lost.__cause__ if lost is not None else None
    return (
        scope.terminated
        and not scope.returning
        and isinstance(last, asyncpg.PostgresError)
        and last.sqlstate == "08P01"
        and str(last) == PGBOUNCER_LOST
    )


async def assert_pool_whole(pool: asyncpg.Pool) -> None:
    """The pool serves as many connections at once as it holds, and each one answers."""
    held = await asyncio.gather(*(pool.acquire(timeout=10) for _ in range(pool.get_max_size())))
    try:
        for conn in held:
            assert await conn.fetchval("SELECT 1") == 1, f"seed {SEED}"
            assert not conn.is_in_transaction(), f"seed {SEED}"
    finally:
        for conn in held:
            await pool.release(conn)
