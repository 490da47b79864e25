"""Migrator processes killed with SIGKILL mid-stage, two migrators at once, a lock lost.

The migrator is ``python -m hookbus migrate _migration_app:plugins``, started
by the test and killed by its pid. 20,000 rows by default; ``HOOKBUS_SOAK_ROWS=1000000``
(``./run migrate-soak``) for the full size. ``HOOKBUS_SOAK_SEED`` replays a run.

The lock-loss test terminates the backend of a migrator's lock connection at a random point
of a batched stage while a second migrator waits for the lock: ``HOOKBUS_LOCK_LOSSES`` rounds
(8 by default, each seen red at once with the fence removed; ``./run lock-loss`` for 500).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from _migration_app import FILL, SETUP, make
from hookbus_asyncpg import LockLostError, Migrator, PluginManager
from test_migrations import assert_batches_consistent

from hookbus import Batch, BatchedStage, Environment, Migration, MigrationError

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
ROWS = int(os.environ.get("HOOKBUS_SOAK_ROWS", "20000"))
BATCH = 1000 if ROWS >= 500_000 else 200
SEED = int(os.environ.get("HOOKBUS_SOAK_SEED", str(random.randrange(1 << 30))))
LOSSES = int(os.environ.get("HOOKBUS_LOCK_LOSSES", "8"))


@pytest_asyncio.fixture
async def counted(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """``counted`` with ROWS rows and ``counter`` 1.0 installed: a 2.0 migration pending."""
    await pool.execute(SETUP)
    await pool.execute(FILL, ROWS)
    await pool.execute("ANALYZE counted")
    await PluginManager(pool, make("1.0")).install()
    yield pool


async def migrator(dsn: str, *args: str, **env: str) -> asyncio.subprocess.Process:
    """Start a migrator process on ``dsn``; its progress lines come on stderr, one a batch."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hookbus", "migrate", "_migration_app:plugins",
        "--progress", "lines", *args,
        cwd=TESTS,
        env={
            **os.environ, "HOOKBUS_DSN": dsn, "HOOKBUS_PROGRESS_INTERVAL": "0",
            "HOOKBUS_TEST_BATCH": str(BATCH),
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "adapters")]), **env,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def batches_seen(proc: asyncio.subprocess.Process, count: int) -> list[str]:
    """Read the migrator's log until ``count`` batches were committed; the lines read."""
    assert proc.stderr is not None
    lines: list[str] = []
    seen = 0
    while seen < count:
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        if not line:
            raise AssertionError(f"the migrator ended early:\n{''.join(lines)}")
        lines.append(line)
        seen += " rows, " in line and "stage ended" not in line
    return lines


async def kill(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGKILL)  # by its pid: only the process this test started
    assert await asyncio.wait_for(proc.wait(), 30) == -signal.SIGKILL


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), 600)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def stage_row(pool: asyncpg.Pool) -> asyncpg.Record:
    return await pool.fetchrow(
        "SELECT status, rows, batches, cursor FROM hookbus_stage WHERE plugin = 'counter'"
    )


async def test_a_migrator_killed_twice_at_random_points_resumes_with_every_row_once(
    dsn: str, counted: asyncpg.Pool
) -> None:
    rng = random.Random(SEED)
    print(f"HOOKBUS_SOAK_SEED={SEED} HOOKBUS_SOAK_ROWS={ROWS}")
    batches = ROWS // BATCH
    for _ in range(2):
        proc = await migrator(dsn)
        await batches_seen(proc, rng.randint(2, max(3, batches // 4)))
        await asyncio.sleep(rng.uniform(0, 0.02))  # a random point inside the next batch
        await kill(proc)
        stage = await stage_row(counted)
        assert stage["status"] == "running"  # killed: it never got to record an end
        assert 0 < stage["rows"] < ROWS
        # what the progress rows say is exactly what the data shows, batch for batch
        hits = await counted.fetchrow(
            "SELECT count(*) FILTER (WHERE hits = 1) AS once, "
            "count(*) FILTER (WHERE hits > 1) AS twice, max(id) FILTER (WHERE hits = 1) AS last "
            "FROM counted"
        )
        assert (hits["once"], hits["twice"]) == (stage["rows"], 0)
        assert str(hits["last"]) == stage["cursor"]

    code, out, err = await finish(await migrator(dsn))
    assert code == 0, err
    assert "upgraded: counter" in out
    assert await counted.fetchval("SELECT count(*) FROM counted WHERE hits <> 1") == 0
    stage = await stage_row(counted)
    assert (stage["status"], stage["rows"], stage["batches"]) == ("completed", ROWS, batches)
    await assert_batches_consistent(counted, "count", ROWS)
    state = await counted.fetchrow(
        "SELECT state, version FROM hookbus_plugin WHERE name = 'counter'"
    )
    assert tuple(state) == ("installed", "2.0")


async def test_two_migrators_one_waits_then_names_the_holder_whose_death_frees_the_lock(
    dsn: str, counted: asyncpg.Pool
) -> None:
    holder = await migrator(dsn, HOOKBUS_TEST_BATCH_SLEEP="0.05")
    try:
        await batches_seen(holder, 1)  # it holds the lock and is migrating
        waiter = await migrator(dsn, "--lock-wait", "0.5")
        code, _, err = await finish(waiter)
        assert code == 5, err  # ExitStatus.BUSY
        backend = await counted.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            f"hookbus migrator pid {holder.pid} on {os.uname().nodename}"[:63],
        )
        assert backend is not None
        assert f"backend pid {backend}" in err
        assert f"hookbus migrator pid {holder.pid}" in err
        assert "waited 0.5 s" in err
    finally:
        if holder.returncode is None:
            await kill(holder)
    # the holder's death ended its session, and the lock with it
    code, out, err = await finish(await migrator(dsn, "--lock-wait", "30"))
    assert code == 0, err
    assert "upgraded: counter" in out
    assert await counted.fetchval("SELECT count(*) FROM counted WHERE hits <> 1") == 0


def test_state_changing_commands_refuse_to_run_without_an_explicit_dsn() -> None:
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "HOOKBUS_DSN"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "adapters")])
    for command in ("install", "upgrade", "migrate"):
        out = subprocess.run(
            [sys.executable, "-m", "hookbus", command, "_migration_app:plugins"],
            cwd=TESTS, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode != 0
        assert "HOOKBUS_DSN is not set" in out.stderr
    dry = subprocess.run(
        [sys.executable, "-m", "hookbus", "migrate", "--dry-run",
         "_migration_app:plugins"],
        cwd=TESTS, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "counter  2.0      count  batched  runs" in dry.stdout


# -- the lock lost mid-stage (in this process: two Migrators, each with its own lock) ---------

LOSSY_ROWS, LOSSY_BATCH = 800, 40  # 20 batches
LOSSY = """
DROP TABLE IF EXISTS hookbus_batch, hookbus_stage, hookbus_plugin, hookbus_error, hookbus_hook_run,
    lossy;
CREATE TABLE lossy (id bigint PRIMARY KEY, hits integer NOT NULL DEFAULT 0);
INSERT INTO lossy (id) SELECT i FROM generate_series(1, 800) i;
"""


async def count_lossy(batch: Batch) -> None:
    await batch.tx.connection.execute(
        "UPDATE lossy SET hits = hits + 1 WHERE id > $1 AND id <= $2",
        batch.after if batch.after is not None else -1,
        batch.last,
    )
    await batch.tx.connection.execute("SELECT pg_sleep(0.002)")  # a batch takes some time


def lossy(apply: Callable[[Batch], Awaitable[None]] = count_lossy) -> Migration:
    return Migration("2.0", [BatchedStage("count", apply, table="lossy", batch_size=LOSSY_BATCH)])


class _Quiet:
    def advance(self, rows: int) -> None: ...

    def close(self) -> None: ...


def quiet_migrator(pool: asyncpg.Pool) -> Migrator:
    return Migrator(pool, Environment("test"), progress=lambda *_: _Quiet())


async def lock_backend(migrator: Migrator) -> int:
    holder = await migrator.lock.holder()
    assert holder is not None
    return holder.pid


async def test_a_migrator_whose_lock_is_lost_stops_and_leaves_its_stage_failed(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute(LOSSY)
    inside = asyncio.Event()

    async def apply(batch: Batch) -> None:
        await count_lossy(batch)
        if batch.number == 3:
            inside.set()
            await asyncio.wait_for(proceed.wait(), 30)

    proceed = asyncio.Event()
    first = quiet_migrator(pool)
    running = asyncio.create_task(first.run("p", lossy(apply)))
    await asyncio.wait_for(inside.wait(), 30)
    await pool.execute("SELECT pg_terminate_backend($1, 10000)", await lock_backend(first))
    proceed.set()
    with pytest.raises(MigrationError, match="batch 4 after key 120: LockLostError") as caught:
        await asyncio.wait_for(running, 30)
    assert isinstance(caught.value.__cause__, LockLostError)
    stage = await pool.fetchrow("SELECT status, rows, error FROM hookbus_stage WHERE plugin = 'p'")
    assert (stage["status"], stage["rows"]) == ("failed", 120)  # batch 3 was fenced: it landed
    assert "lost with its connection" in stage["error"]
    history = await pool.fetch("SELECT step, error FROM hookbus_error")
    assert [(r["step"], "LockLostError" in r["error"]) for r in history] == [("count", True)]

    await quiet_migrator(pool).run("p", lossy())  # a rerun finishes the rows, each once
    assert await pool.fetchval("SELECT count(*) FROM lossy WHERE hits <> 1") == 0
    await assert_batches_consistent(pool, "count", LOSSY_ROWS)


async def test_a_lost_lock_never_lets_two_migrators_run_batches_at_once(
    pool: asyncpg.Pool,
) -> None:
    rng = random.Random(SEED)
    print(f"HOOKBUS_SOAK_SEED={SEED} HOOKBUS_LOCK_LOSSES={LOSSES}")
    for round_ in range(LOSSES):
        await pool.execute(LOSSY)
        inside, terminated = asyncio.Event(), asyncio.Event()
        number = rng.randint(2, 8)

        async def apply(
            batch: Batch,
            number: int = number,
            inside: asyncio.Event = inside,
            terminated: asyncio.Event = terminated,
        ) -> None:
            if batch.number == number:
                inside.set()
            elif batch.number > number:  # never done before its lock is lost: batches are left
                await asyncio.wait_for(terminated.wait(), 30)
            await count_lossy(batch)

        first, second = quiet_migrator(pool), quiet_migrator(pool)
        loser = asyncio.create_task(first.run("p", lossy(apply)))
        await asyncio.wait_for(inside.wait(), 30)
        # The second migrator waits for the lock while the first is inside a batch; the
        # first's lock connection dies at a random point of the stage.
        winner = asyncio.create_task(second.run("p", lossy()))
        await asyncio.sleep(rng.uniform(0, 0.02))  # a random point: no event marks it
        await pool.execute("SELECT pg_terminate_backend($1, 10000)", await lock_backend(first))
        terminated.set()
        lost, won = await asyncio.wait_for(
            asyncio.gather(loser, winner, return_exceptions=True), 60
        )
        context = f"round {round_}, seed {SEED}"
        assert won is None, context
        assert isinstance(lost, MigrationError), (context, lost)
        assert isinstance(lost.__cause__, LockLostError), context

        batches = await pool.fetch(
            "SELECT token, started_at, committed_at FROM hookbus_batch "
            "WHERE status = 'completed' ORDER BY started_at"
        )
        tokens = sorted({b["token"] for b in batches})
        assert len(tokens) == 2, context  # each migrator did batches, the loser first
        for a, b in itertools.combinations(batches, 2):
            if a["token"] != b["token"]:  # two migrators' batches never overlap in time
                assert a["committed_at"] < b["started_at"], context
        # the loser's stage failed: its error is kept, under its token
        loss = await pool.fetch("SELECT token, error FROM hookbus_error")
        assert [(r["token"], "LockLostError" in r["error"]) for r in loss] == [(tokens[0], True)], (
            context
        )
        # every row exactly once, the batches a chain from the first key to the last
        assert await pool.fetchval("SELECT count(*) FROM lossy WHERE hits <> 1") == 0, context
        await assert_batches_consistent(pool, "count", LOSSY_ROWS)
        assert (
            await pool.fetchval("SELECT status FROM hookbus_stage WHERE plugin = 'p'")
            == "completed"
        )


# -- a database made by an older hookbus, upgraded by the documented command ----------------

# The plugin tables as hookbus made them at commit 92abf95 (layout 1.0), verbatim.
LAYOUT_92ABF95 = """
CREATE TABLE IF NOT EXISTS hookbus_plugin (
    name text PRIMARY KEY,
    version text,
    target_version text NOT NULL,
    state text NOT NULL CHECK (state IN
        ('installing', 'installed', 'upgrading', 'failed', 'uninstalled')),
    requires text[] NOT NULL DEFAULT '{}',
    installed_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    error text
);
CREATE TABLE IF NOT EXISTS hookbus_stage (
    plugin text NOT NULL,
    version text NOT NULL,
    stage text NOT NULL,
    position integer NOT NULL,
    kind text NOT NULL CHECK (kind IN ('atomic', 'batched')),
    status text NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'skipped',
                                           'undone')),
    cursor text,
    rows bigint NOT NULL DEFAULT 0,
    total bigint,
    batches integer NOT NULL DEFAULT 0,
    duration double precision NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    error text,
    PRIMARY KEY (plugin, version, stage)
);
CREATE TABLE IF NOT EXISTS hookbus_batch (
    id bigserial PRIMARY KEY,
    plugin text NOT NULL,
    version text NOT NULL,
    stage text NOT NULL,
    number integer NOT NULL,
    after_key text,
    last_key text,
    rows integer NOT NULL,
    status text NOT NULL CHECK (status IN ('completed', 'failed', 'undone')),
    duration double precision NOT NULL,
    error text,
    at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (plugin, version, stage) REFERENCES hookbus_stage ON DELETE CASCADE
);
CREATE UNIQUE INDEX IF NOT EXISTS hookbus_batch_done
    ON hookbus_batch (plugin, version, stage, number) WHERE status = 'completed';
"""


async def test_a_database_made_by_hookbus_at_92abf95_is_upgraded_by_hookbus_migrate(
    dsn: str, pool: asyncpg.Pool
) -> None:
    await pool.execute(SETUP + "DROP TABLE IF EXISTS hookbus_locks;")
    await pool.execute(FILL, 1000)
    await pool.execute(LAYOUT_92ABF95)
    await pool.execute(  # what 'hookbus install' of counter 1.0 left there
        "INSERT INTO hookbus_plugin (name, version, target_version, state, installed_at) "
        "VALUES ('counter', '1.0', '1.0', 'installed', now())"
    )
    env = {"HOOKBUS_DSN": dsn, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "adapters")])}
    for command in (
        ["status", "_migration_app:plugins"],
        ["migrate", "--dry-run", "_migration_app:plugins"],
    ):
        shown = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hookbus", *command, cwd=TESTS, env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        code, out, err = await finish(shown)
        assert code == 0, err
    plan = " ".join(out.split())
    assert "hookbus 2.0 batch intervals, error history, hook runs atomic run" in plan
    assert "counter 2.0 count batched run" in plan

    code, out, err = await finish(await migrator(dsn))
    assert code == 0, err
    assert "upgraded: counter" in out
    assert await pool.fetchval("SELECT count(*) FROM counted WHERE hits <> 1") == 0
    own = await pool.fetchrow("SELECT state, version FROM hookbus_plugin WHERE name = 'hookbus'")
    assert tuple(own) == ("installed", "2.0")
    stage = await pool.fetchrow("SELECT status FROM hookbus_stage WHERE plugin = 'hookbus'")
    assert stage["status"] == "completed"
    # the counter's batches ran on the new layout: fenced, with their interval, all rows touched
    batches = await pool.fetch(
        "SELECT token, started_at, committed_at, touched, rows FROM hookbus_batch "
        "WHERE plugin = 'counter'"
    )
    assert batches and all(
        b["token"] and b["started_at"] < b["committed_at"] and b["touched"] == b["rows"]
        for b in batches
    )
    code, out, err = await finish(await migrator(dsn))  # once upgraded, nothing is left
    assert (code, out) == (0, "upgraded: nothing (all up to date)\n"), err


@pytest.fixture(autouse=True)
def _seed_in_report(request: pytest.FixtureRequest) -> None:
    request.node.user_properties.append(("HOOKBUS_SOAK_SEED", SEED))
