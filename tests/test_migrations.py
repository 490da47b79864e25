"""Migrations on PostgreSQL: stages skipped, resumed, conditional, validated; batches; the lock."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from hookbus_asyncpg import MigrationLock, MigrationLockTimeout, Migrator, StageProgress

from hookbus import (
    Batch,
    BatchedStage,
    Environment,
    Migration,
    MigrationError,
    PluginError,
    Stage,
    StageContext,
)


@pytest_asyncio.fixture
async def db(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """The module's database with fresh progress tables and an ``item`` table of 1,000 rows."""
    await pool.execute(
        "DROP TABLE IF EXISTS hookbus_batch, hookbus_stage, hookbus_plugin, hookbus_error, "
        "hookbus_hook_run, item"
    )
    await pool.execute(
        "CREATE TABLE item (id bigint PRIMARY KEY, name text, hits int NOT NULL DEFAULT 0);"
        "INSERT INTO item (id, name) SELECT i * 3, 'n' || i FROM generate_series(1, 1000) i"
    )
    yield pool


async def migrator(pool: asyncpg.Pool, env: Environment | None = None) -> Migrator:
    m = Migrator(pool, env or Environment("test"), progress=lambda *_: _Quiet())
    await m.create_tables()
    return m


class _Quiet:
    def advance(self, rows: int) -> None: ...

    def close(self) -> None: ...


async def stages(pool: asyncpg.Pool) -> dict[str, StageProgress]:
    async with pool.acquire() as conn:
        from hookbus_asyncpg._plugins._stage_records import read_progress

        return {s.stage: s for s in await read_progress(conn, "p")}


def counting(calls: list[str], name: str, fail: list[bool] | None = None) -> Any:
    async def run(ctx: StageContext) -> None:
        await ctx.tx.connection.execute("UPDATE item SET hits = hits + 1 WHERE id = 3")
        calls.append(name)
        if fail and fail[0]:
            raise RuntimeError(f"{name} broke")

    return run


async def test_completed_stages_are_skipped_and_a_failed_one_resumes(db: asyncpg.Pool) -> None:
    calls: list[str] = []
    fail = [True]
    migration = Migration("2.0", [
        Stage("structure", counting(calls, "structure")),
        Stage("relations", counting(calls, "relations", fail)),
        Stage("computed", counting(calls, "computed")),
    ])  # fmt: skip
    m = await migrator(db)
    with pytest.raises(MigrationError, match=r"p 2.0 / relations failed: RuntimeError"):
        await m.run("p", migration)
    progress = await stages(db)
    assert {n: s.status for n, s in progress.items()} == {
        "structure": "completed",
        "relations": "failed",
    }
    assert progress["relations"].error == "RuntimeError: relations broke"
    # the failed stage's work rolled back with its transaction: one hit, from "structure"
    assert await db.fetchval("SELECT hits FROM item WHERE id = 3") == 1

    fail[0] = False
    await m.run("p", migration)
    assert calls == ["structure", "relations", "relations", "computed"]
    assert {s.status for s in (await stages(db)).values()} == {"completed"}
    assert await db.fetchval("SELECT hits FROM item WHERE id = 3") == 3
    await m.run("p", migration)  # all completed: nothing runs again
    assert len(calls) == 4


async def test_conditional_stages_follow_the_environment_and_flags(db: asyncpg.Pool) -> None:
    calls: list[str] = []
    migration = Migration("1.1", [
        Stage("production data", counting(calls, "prod"), condition=lambda e: e.is_production),
        Stage("demo data", counting(calls, "demo"), condition=lambda e: not e.is_production),
        Stage("sync", counting(calls, "sync"), condition=lambda e: e.enabled("external_sync")),
    ])  # fmt: skip
    m = await migrator(db, Environment("development"))
    plan = await m.plan("p", [migration])
    assert [(s.stage, s.action) for s in plan] == [
        ("production data", "skip (condition)"),
        ("demo data", "run"),
        ("sync", "skip (condition)"),
    ]
    await m.run("p", migration)
    assert calls == ["demo"]
    assert {n: s.status for n, s in (await stages(db)).items()} == {
        "production data": "skipped",
        "demo data": "completed",
        "sync": "skipped",
    }
    # skipped is not done: in production with the flag on, the skipped stages run
    await (await migrator(db, Environment("production", flags=["external_sync"]))).run(
        "p", migration
    )
    assert calls == ["demo", "prod", "sync"]


async def test_a_failing_validation_fails_the_stage_and_rolls_its_work_back(
    db: asyncpg.Pool,
) -> None:
    async def blank_names(ctx: StageContext) -> None:
        await ctx.tx.connection.execute("UPDATE item SET name = NULL WHERE id <= 30")

    async def no_blank_name(ctx: StageContext) -> bool:
        return not await ctx.tx.connection.fetchval("SELECT count(*) FROM item WHERE name IS NULL")

    migration = Migration("2.0", [Stage("blank", blank_names, validate=no_blank_name)])
    with pytest.raises(MigrationError, match="validation no_blank_name failed"):
        await (await migrator(db)).run("p", migration)
    assert (await stages(db))["blank"].status == "failed"
    assert await db.fetchval("SELECT count(*) FROM item WHERE name IS NULL") == 0


async def hit(batch: Batch) -> None:
    """A batched stage's apply: one more hit on each row of the batch."""
    sql = "UPDATE item SET hits = hits + 1 WHERE id <= $1"
    if batch.after is None:
        await batch.tx.connection.execute(sql, batch.last)
    else:
        await batch.tx.connection.execute(sql + " AND id > $2", batch.last, batch.after)


async def test_a_batched_stage_visits_every_row_once_in_key_order(db: asyncpg.Pool) -> None:
    migration = Migration("2.0", [BatchedStage("hits", hit, table="item", batch_size=64)])
    await (await migrator(db)).run("p", migration)
    assert await db.fetchval("SELECT count(*) FROM item WHERE hits <> 1") == 0
    stage = (await stages(db))["hits"]
    assert (stage.status, stage.rows, stage.total, stage.batches) == ("completed", 1000, 1000, 16)
    assert stage.cursor == "3000"
    await assert_batches_consistent(db, "hits", 1000)


async def assert_batches_consistent(pool: asyncpg.Pool, stage: str, total: int) -> None:
    """Completed batches numbered 1..n, each starting where the previous ended, rows adding up."""
    rows = await pool.fetch(
        "SELECT number, after_key, last_key, rows FROM hookbus_batch "
        "WHERE stage = $1 AND status = 'completed' ORDER BY number",
        stage,
    )
    assert [r["number"] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[0]["after_key"] is None
    for before, after in itertools.pairwise(rows):
        assert after["after_key"] == before["last_key"]
    assert sum(r["rows"] for r in rows) == total
    recorded = await pool.fetchrow(
        "SELECT rows, batches, cursor FROM hookbus_stage WHERE stage = $1", stage
    )
    assert (recorded["rows"], recorded["batches"]) == (total, len(rows))
    assert recorded["cursor"] == rows[-1]["last_key"]


async def test_a_failed_batch_rolls_back_alone_and_the_stage_resumes_after_the_last_good_one(
    db: asyncpg.Pool,
) -> None:
    broken = [True]

    async def apply(batch: Batch) -> None:
        await hit(batch)
        if batch.number == 5 and broken[0]:
            raise ValueError("row 1,203 cannot be converted")

    migration = Migration("2.0", [BatchedStage("hits", apply, table="item", batch_size=100)])
    m = await migrator(db)
    with pytest.raises(MigrationError, match="batch 5 after key 1200: ValueError"):
        await m.run("p", migration)
    stage = (await stages(db))["hits"]
    assert (stage.status, stage.rows, stage.batches, stage.cursor) == ("failed", 400, 4, "1200")
    assert await db.fetchval("SELECT count(*) FROM item WHERE hits = 1") == 400
    failed = await db.fetchrow("SELECT number, after_key, error FROM hookbus_batch "
                               "WHERE status = 'failed'")  # fmt: skip
    assert (failed["number"], failed["after_key"]) == (5, "1200")

    broken[0] = False
    assert [(s.action, s.detail) for s in await m.plan("p", [migration])] == [
        ("resume", "after key 1200, 400 rows done")
    ]
    await m.run("p", migration)
    assert await db.fetchval("SELECT count(*) FROM item WHERE hits <> 1") == 0
    await assert_batches_consistent(db, "hits", 1000)


async def test_a_batched_stage_validates_after_its_last_batch(db: asyncpg.Pool) -> None:
    async def every_row_hit(ctx: StageContext) -> bool:
        return not await ctx.tx.connection.fetchval("SELECT count(*) FROM item WHERE hits = 0")

    await db.execute("INSERT INTO item (id, name) VALUES (-1, 'behind the first key')")
    migration = Migration("2.0", [
        BatchedStage("hits", hit, table="item", batch_size=500, validate=every_row_hit),
    ])  # fmt: skip
    await (await migrator(db)).run("p", migration)  # -1 is the first key: visited
    assert (await stages(db))["hits"].status == "completed"


async def test_a_batched_stage_pages_any_key_type(db: asyncpg.Pool) -> None:
    await db.execute("DROP TABLE IF EXISTS code_item")
    await db.execute(
        "CREATE TABLE code_item (code text PRIMARY KEY, seen int NOT NULL DEFAULT 0);"
        "INSERT INTO code_item (code) SELECT md5(i::text) FROM generate_series(1, 250) i"
    )

    async def apply(batch: Batch) -> None:
        await batch.tx.connection.execute(
            "UPDATE code_item SET seen = seen + 1 WHERE code <= $1 "
            "AND ($2::text IS NULL OR code > $2)",
            batch.last,
            batch.after,
        )

    migration = Migration("2.0", [
        BatchedStage("codes", apply, table="code_item", key="code", batch_size=40),
    ])  # fmt: skip
    await (await migrator(db)).run("p", migration)
    assert await db.fetchval("SELECT count(*) FROM code_item WHERE seen <> 1") == 0
    await assert_batches_consistent(db, "codes", 250)


async def test_a_stage_lock_timeout_bounds_its_wait_for_a_row_lock(db: asyncpg.Pool) -> None:
    migration = Migration("2.0", [
        BatchedStage("hits", hit, table="item", batch_size=1000, lock_timeout=0.2),
    ])  # fmt: skip
    async with db.acquire() as holder, holder.transaction():
        await holder.execute("SELECT * FROM item WHERE id = 9 FOR UPDATE")
        with pytest.raises(MigrationError, match="LockNotAvailableError"):
            await (await migrator(db)).run("p", migration)
    await (await migrator(db)).run("p", migration)  # the row lock gone, it resumes and ends
    assert await db.fetchval("SELECT count(*) FROM item WHERE hits <> 1") == 0


async def test_a_second_migrator_waits_then_names_the_holder(db: asyncpg.Pool) -> None:
    async with MigrationLock(db, wait=5) as lock:
        # This database's holder only: another suite may run migrators on the same server.
        holder = await lock.holder()
        assert holder is not None
        holder_pid = holder.pid
        with pytest.raises(MigrationLockTimeout) as caught:
            async with MigrationLock(db, wait=0.3):
                pytest.fail("two migrators held the lock at once")
        assert caught.value.pid == holder_pid
        assert f"backend pid {holder_pid}" in str(caught.value)
        assert "application_name 'hookbus migrator pid" in str(caught.value)
        assert "waited 0.3 s" in str(caught.value)
        assert caught.value.since is not None
    # released at the end of the block: the next one gets it at once
    async with MigrationLock(db, wait=0.3):
        pass


async def test_a_waiting_migrator_gets_the_lock_as_soon_as_it_is_released(
    db: asyncpg.Pool,
) -> None:
    first = MigrationLock(db, wait=1)
    await first.__aenter__()
    second = asyncio.create_task(MigrationLock(db, wait=30).__aenter__())
    await asyncio.wait_for(_until(db, _WAITING_FOR_THE_MIGRATION_LOCK), 10)
    await first.__aexit__(None, None, None)
    lock = await asyncio.wait_for(second, 10)
    await lock.__aexit__(None, None, None)


# A migrator waiting for the migration lock of this test's database, not of any other.
_WAITING_FOR_THE_MIGRATION_LOCK = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND NOT granted AND classid = x'686b6273'::int::oid AND objid = 1
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


async def _until(pool: asyncpg.Pool, query: str) -> None:
    # The server's view of a lock wait is polled: PostgreSQL signals nothing to await.
    for _ in range(1000):
        if await pool.fetchval(query):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never true: {query}")


async def test_a_batched_stage_declaring_undo_is_undone_batch_by_batch_and_redone(
    db: asyncpg.Pool,
) -> None:
    await db.execute(
        "DROP TABLE IF EXISTS item_backup;"
        "CREATE TABLE item_backup (id bigint PRIMARY KEY, name text)"
    )

    async def upper(batch: Batch) -> None:  # the lesson's backup, then the change
        await batch.tx.connection.execute(
            "INSERT INTO item_backup SELECT id, name FROM item WHERE id > $1 AND id <= $2;",
            batch.after if batch.after is not None else -1,
            batch.last,
        )
        await batch.tx.connection.execute(
            "UPDATE item SET name = upper(name) WHERE id > $1 AND id <= $2",
            batch.after if batch.after is not None else -1,
            batch.last,
        )

    async def restore(batch: Batch) -> None:  # the lesson's restore
        await batch.tx.connection.execute(
            "WITH gone AS (DELETE FROM item_backup WHERE id > $1 AND id <= $2 RETURNING *) "
            "UPDATE item SET name = gone.name FROM gone WHERE item.id = gone.id",
            batch.after if batch.after is not None else -1,
            batch.last,
        )

    stage = BatchedStage("upper", upper, table="item", batch_size=300, undo=restore)
    migration = Migration("2.0", [Stage("atomic", counting([], "atomic")), stage])
    m = await migrator(db)
    await m.run("p", migration)
    assert await db.fetchval("SELECT count(*) FROM item WHERE name LIKE 'N%'") == 1000

    assert await m.undo("p", migration, "upper") == 4
    assert await db.fetchval("SELECT count(*) FROM item WHERE name LIKE 'n%'") == 1000
    assert await db.fetchval("SELECT count(*) FROM item_backup") == 0
    undone = (await stages(db))["upper"]
    assert (undone.status, undone.rows, undone.batches, undone.cursor) == ("undone", 0, 0, None)
    assert await db.fetchval("SELECT count(*) FROM hookbus_batch WHERE status = 'undone'") == 4
    with pytest.raises(MigrationError, match="atomic cannot be undone: it declares no undo"):
        await m.undo("p", migration, "atomic")

    await m.run("p", migration)  # undone is not done: it runs again, all of it
    assert await db.fetchval("SELECT count(*) FROM item WHERE name LIKE 'N%'") == 1000
    await assert_batches_consistent(db, "upper", 1000)


async def test_a_batched_stage_whose_validation_fails_is_failed_and_revalidated_on_rerun(
    db: asyncpg.Pool,
) -> None:
    async def nothing_negative(ctx: StageContext) -> bool:
        return not await ctx.tx.connection.fetchval("SELECT count(*) FROM item WHERE id < 0")

    await db.execute("INSERT INTO item (id, name) VALUES (-5, 'bad')")
    migration = Migration("2.0", [
        BatchedStage("hits", hit, table="item", batch_size=400, validate=nothing_negative),
    ])  # fmt: skip
    m = await migrator(db)
    with pytest.raises(MigrationError, match="validation nothing_negative failed"):
        await m.run("p", migration)
    stage = (await stages(db))["hits"]
    assert (stage.status, stage.rows) == ("failed", 1001)  # the batches stay committed
    await db.execute("DELETE FROM item WHERE id < 0")
    await m.run("p", migration)  # no batch left: only the validation runs again
    stage = (await stages(db))["hits"]
    assert (stage.status, stage.rows, stage.batches) == ("completed", 1001, 3)
    assert await db.fetchval("SELECT count(*) FROM item WHERE hits <> 1") == 0


def test_progress_is_a_tqdm_bar_on_request_and_log_lines_otherwise(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hookbus_asyncpg import open_progress

    bar = open_progress("p 2.0 / fill", 1000, 200, bar=True)
    bar.advance(300)
    bar.close()
    drawn = capsys.readouterr().err
    assert "p 2.0 / fill" in drawn and "500/1" in drawn and "row/s" in drawn

    caplog.set_level("INFO", logger="hookbus.migrations")
    monkeypatch.setenv("HOOKBUS_PROGRESS_INTERVAL", "0")
    lines = open_progress("p 2.0 / fill", 1000, 200, bar=False)
    lines.advance(300)
    lines.close()
    assert caplog.messages[0].startswith("p 2.0 / fill: 500/1,000 rows, ")
    assert caplog.messages[0].endswith(" s left")
    assert caplog.messages[1].endswith("(stage ended)")


async def test_an_upgrade_and_its_failures_need_no_more_than_two_connections(
    db: asyncpg.Pool, dsn: str
) -> None:
    from hookbus_asyncpg import PluginManager

    from hookbus import Bus, Plugin, PluginSet

    broken = [True]

    async def apply(batch: Batch) -> None:
        await hit(batch)
        if broken[0] and batch.number == 2:
            raise ValueError("bad row")

    def plugins(version: str) -> PluginSet:
        stage = BatchedStage("hits", apply, table="item", batch_size=300)
        migrations = [Migration("2.0", [Stage("first", counting([], "first")), stage])]
        return PluginSet(Bus(), [Plugin("p", version, migrations=migrations)])

    async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as small:
        await PluginManager(small, plugins("1.0")).install()
        manager = PluginManager(small, plugins("2.0"), progress=lambda *_: _Quiet())
        with pytest.raises(MigrationError, match="batch 2 after key 900: ValueError: bad row"):
            await asyncio.wait_for(manager.upgrade(), 60)
        broken[0] = False
        assert await asyncio.wait_for(manager.upgrade(), 60) == ["p"]
    assert await db.fetchval("SELECT count(*) FROM item WHERE hits <> 1") == 1  # id 3: "first"


async def test_every_statement_of_a_batched_stage_runs_under_its_lock_timeout(
    db: asyncpg.Pool,
) -> None:
    migration = Migration("2.0", [
        BatchedStage("hits", hit, table="item", batch_size=100, lock_timeout=0.3),
    ])  # fmt: skip
    m = await migrator(db)
    async with db.acquire() as holder, holder.transaction():
        await holder.execute("LOCK TABLE item IN ACCESS EXCLUSIVE MODE")
        # The stage's first statements (the key's type, the rows to do) wait on the table too.
        with pytest.raises(MigrationError, match="LockNotAvailableError"):
            await asyncio.wait_for(m.run("p", migration), 10)
    assert (await stages(db))["hits"].status == "failed"
    await m.run("p", migration)
    assert await db.fetchval("SELECT count(*) FROM item WHERE hits <> 1") == 0


async def test_a_batched_stage_refuses_a_key_that_is_not_unique_before_its_first_batch(
    db: asyncpg.Pool,
) -> None:
    await db.execute(
        "DROP TABLE IF EXISTS repeated;"
        "CREATE TABLE repeated (id serial PRIMARY KEY, k int NOT NULL, seen int NOT NULL "
        "DEFAULT 0, UNIQUE (k, id));"  # unique together, and another column's key: not enough
        "CREATE INDEX ON repeated (k); CREATE UNIQUE INDEX ON repeated (k) WHERE k > 100;"
        "INSERT INTO repeated (k) SELECT unnest('{1, 2, 3, 3, 3, 4, 5, 5, 6, 7}'::int[])"
    )

    async def see(batch: Batch) -> None:
        await batch.tx.connection.execute(
            "UPDATE repeated SET seen = seen + 1 WHERE ($1::int IS NULL OR k > $1) AND k <= $2",
            batch.after,
            batch.last,
        )

    migration = Migration("2.0", [
        BatchedStage("see", see, table="repeated", key="k", batch_size=3),
    ])  # fmt: skip
    m = await migrator(db)
    with pytest.raises(MigrationError, match="the key 'k' of 'repeated' is not unique"):
        await m.run("p", migration)
    assert await db.fetchval("SELECT count(*) FROM repeated WHERE seen > 0") == 0
    assert (await stages(db))["see"].status == "failed"

    await db.execute("DELETE FROM repeated a USING repeated b WHERE a.k = b.k AND a.ctid > b.ctid")
    await db.execute("ALTER TABLE repeated ADD UNIQUE (k)")
    await m.run("p", migration)
    assert await db.fetchval("SELECT count(*) FROM repeated WHERE seen <> 1") == 0


async def test_a_batch_that_changes_none_of_the_rows_of_its_page_is_recorded_and_reported(
    db: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    async def forgets_the_first_batch(batch: Batch) -> None:  # id > NULL matches no row
        await batch.tx.connection.execute(
            "UPDATE item SET hits = hits + 1 WHERE id > $1 AND id <= $2", batch.after, batch.last
        )

    migration = Migration("2.0", [
        BatchedStage("hits", forgets_the_first_batch, table="item", batch_size=300),
    ])  # fmt: skip
    caplog.set_level("WARNING", logger="hookbus.migrations")
    await (await migrator(db)).run("p", migration)
    stage = (await stages(db))["hits"]
    assert (stage.status, stage.rows, stage.untouched) == ("completed", 1000, 1)
    touched = await db.fetch("SELECT number, touched FROM hookbus_batch ORDER BY number")
    assert [tuple(r) for r in touched] == [(1, 0), (2, 300), (3, 300), (4, 100)]
    assert any(
        "1 batch(es) changed none of the rows of their page (batches 1)" in message
        and "batch.after, which is None for the first batch" in message
        for message in caplog.messages
    )

    # a batch that deletes its rows, or writes them in a savepoint, changed them
    async def delete_in_a_savepoint(batch: Batch) -> None:
        async with batch.tx.savepoint():
            await batch.tx.connection.execute(
                "DELETE FROM item WHERE id <= $1 AND ($2::bigint IS NULL OR id > $2)",
                batch.last,
                batch.after,
            )

    migration = Migration("3.0", [
        BatchedStage("delete", delete_in_a_savepoint, table="item", batch_size=300),
    ])  # fmt: skip
    await (await migrator(db)).run("p", migration)
    assert (await stages(db))["delete"].untouched == 0


def test_stage_timeouts_that_cannot_work_are_refused_where_they_are_declared() -> None:
    async def run(ctx: StageContext) -> None: ...

    for value in (float("nan"), float("inf"), True, 0, -1, "1", 1e10):
        for option in ("lock_timeout", "statement_timeout"):
            with pytest.raises(PluginError, match=f"{option} is a finite number of seconds"):
                Stage("s", run, **{option: value})
    Stage("s", run, lock_timeout=0.5, statement_timeout=60)


def test_versions_and_stage_names_are_refused_where_they_are_declared() -> None:
    async def run(ctx: StageContext) -> None: ...

    with pytest.raises(PluginError, match=r"migration '٣\.1': a version is dotted integers"):
        Migration("٣.1", [Stage("s", run)])  # an Arabic-Indic three
    with pytest.raises(PluginError, match="must not contain a NUL character"):
        Stage("a\x00b", run)
    with pytest.raises(PluginError, match="must be valid Unicode"):
        Stage("\udc80", run)


async def test_recorded_times_are_the_server_clock_at_the_moment_they_describe(
    db: asyncpg.Pool,
) -> None:
    async def slow(ctx: StageContext) -> None:
        await ctx.tx.connection.execute("SELECT pg_sleep(0.3)")

    async def slow_batch(batch: Batch) -> None:
        await hit(batch)
        await batch.tx.connection.execute("SELECT pg_sleep(0.1)")

    async def slow_check(ctx: StageContext) -> bool:
        await ctx.tx.connection.execute("SELECT pg_sleep(0.2)")
        return True

    migration = Migration("2.0", [
        Stage("atomic", slow),
        BatchedStage("batched", slow_batch, table="item", batch_size=500, validate=slow_check),
    ])  # fmt: skip
    await (await migrator(db)).run("p", migration)
    progress = await stages(db)
    atomic, batched = progress["atomic"], progress["batched"]
    assert atomic.finished_at is not None and batched.finished_at is not None
    # the stage's own duration, and its finish minus its start, tell the same story
    elapsed = (atomic.finished_at - atomic.started_at).total_seconds()
    assert 0.3 <= elapsed <= atomic.duration + 0.05
    assert atomic.updated_at == atomic.finished_at
    # a batched stage finishes after its validation; each batch's interval holds its work
    elapsed = (batched.finished_at - batched.started_at).total_seconds()
    assert elapsed >= 2 * 0.1 + 0.2
    intervals = await db.fetch(
        "SELECT committed_at - started_at AS took, duration FROM hookbus_batch ORDER BY number"
    )
    assert len(intervals) == 2
    for row in intervals:
        assert 0.1 <= row["took"].total_seconds() <= row["duration"] + 0.05
