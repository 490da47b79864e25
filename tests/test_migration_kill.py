"""Migrator processes killed with SIGKILL mid-stage, and two migrators at once.

The migrator is ``python -m hookbus migrate _migration_app:plugins``, started
by the test and killed by its pid. 20,000 rows by default; ``HOOKBUS_SOAK_ROWS=1000000``
(``./run migrate-soak``) for the full size. ``HOOKBUS_SOAK_SEED`` replays a run.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from _migration_app import FILL, SETUP, make
from hookbus_asyncpg import PluginManager
from test_migrations import assert_batches_consistent

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
ROWS = int(os.environ.get("HOOKBUS_SOAK_ROWS", "20000"))
BATCH = 1000 if ROWS >= 500_000 else 200
SEED = int(os.environ.get("HOOKBUS_SOAK_SEED", str(random.randrange(1 << 30))))


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
    return await pool.fetchrow("SELECT status, rows, batches, cursor FROM hookbus_stage")


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
    state = await counted.fetchrow("SELECT state, version FROM hookbus_plugin")
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


@pytest.fixture(autouse=True)
def _seed_in_report(request: pytest.FixtureRequest) -> None:
    request.node.user_properties.append(("HOOKBUS_SOAK_SEED", SEED))
