"""Running a migration's stages on PostgreSQL, each step recorded in the transaction doing it.

An atomic stage runs, validates and records itself ``completed`` in one transaction. A
batched stage runs one transaction per batch: the batch's keys are read by keyset
(``WHERE key > cursor ORDER BY key LIMIT n``), the stage's ``apply`` runs, and the cursor,
counters and a batch row are written, all in that transaction; killed anywhere, the stage
resumes after the last committed batch. A stage that fails is recorded ``failed`` with its
error (after its transaction rolled back) and the error re-raised as ``MigrationError``.
Completed stages are skipped on a rerun; a failed or interrupted one resumes.

Every transaction of a migration is fenced by the migration lock (``FencedLock.fence``) as its
first statement: no batch starts unless this migrator holds the lock, and a migrator whose
lock was taken over commits nothing more. It then stops with ``MigrationError`` (caused by
``LockLostError``) and its stage is ``failed``, unless another migrator took the stage over
meanwhile: a failure is written only while no other holder took the lock
(``FencedLock.still_current``), and always kept in the error history.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Final, NoReturn, final

import asyncpg
import msgspec

from hookbus import (
    Batch,
    BatchedStage,
    Environment,
    Migration,
    MigrationError,
    Stage,
    StageContext,
    parse_version,
)

from .._transaction._transaction import AsyncpgTransaction, transaction
from ._fenced_lock import FencedLock
from ._migration_lock import MigrationLock
from ._plugin_state import (
    BASE_VERSION,
    OWN,
    OWN_MIGRATIONS,
    OWN_VERSION,
    PluginStateError,
    PluginStateName,
    create_tables,
    read_states,
    write_state,
)
from ._progress_bar import Progress, open_progress
from ._stage_records import StageRecord

__all__ = ["Migrator", "PlannedStage"]

logger: Final = logging.getLogger("hookbus.migrations")

_KEY_TYPE: Final = """
SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped
"""

# A key column pages correctly only if no two rows share a key: a primary key, a unique
# constraint or a unique index on that column alone (no predicate, no expression).
_KEY_UNIQUE: Final = """
SELECT EXISTS (
    SELECT FROM pg_index i JOIN pg_attribute a
        ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
    WHERE i.indrelid = to_regclass($1) AND a.attname = $2 AND i.indisunique AND i.indisvalid
      AND i.indnkeyatts = 1 AND i.indpred IS NULL AND i.indexprs IS NULL
)
"""

ProgressFactory = Callable[[str, "int | None", int], Progress]


@final
class PlannedStage(msgspec.Struct, frozen=True):
    """One stage as a dry run sees it: what would happen to it now, and why."""

    plugin: str
    version: str
    stage: str
    kind: str
    action: str  # "run", "resume", "run (condition now holds)", "skip (completed)",
    # "skip (condition)", "skip (installed)": see ``decide``
    detail: str = ""


#: The actions of a plan that run the stage.
_RUNS: Final = frozenset({"run", "resume", "run (condition now holds)"})


def decide(
    stage: Stage | BatchedStage,
    status: str | None,
    cursor: str | None,
    rows: int,
    env: Environment,
    *,
    revisit: bool = False,
) -> tuple[str, str]:
    """What to do with a stage now: ``(action, detail)``. The one decision of the migrator.

    ``plan`` shows it and ``run`` acts on it. A stage ``completed`` is skipped; one whose
    condition is false in ``env`` is skipped (and recorded ``skipped``); a ``failed`` or
    interrupted one resumes; a new one runs. ``revisit``: the migration is at or below the
    plugin's installed version, so only a stage once ``skipped`` by its condition runs, now
    that the condition holds (skipped is not completed), or resumes if that run failed.
    """
    if status == "completed":
        return "skip (completed)", ""
    if revisit and status not in ("failed", "running"):  # those resume, as anywhere
        if status == "skipped" and stage.applies(env):
            return "run (condition now holds)", f"skipped before, now in {env!r}"
        return "skip (installed)", ""
    if not stage.applies(env):
        return "skip (condition)", f"not in {env!r}"
    resumes = status in ("failed", "running") or cursor is not None
    if resumes and cursor is not None:
        return "resume", f"after key {cursor}, {rows:,} rows done"
    action = "resume" if resumes else "run"
    if isinstance(stage, BatchedStage):
        return action, f"batches of {stage.batch_size:,} over {stage.table}.{stage.key}"
    return action, ""


@final
class _Step:
    """One stage in a plan: its record as read, and what to do with it."""

    __slots__ = ("action", "batches", "cursor", "detail", "migration", "record", "rows", "stage")

    def __init__(
        self,
        migration: Migration,
        stage: Stage | BatchedStage,
        record: StageRecord,
        action: str,
        detail: str,
        cursor: str | None,
        rows: int,
        batches: int,
    ) -> None:
        self.migration = migration
        self.stage = stage
        self.record = record
        self.action = action
        self.detail = detail
        self.cursor = cursor
        self.rows = rows
        self.batches = batches


def _own_migrations(installed: str) -> list[Migration]:
    low = parse_version(installed)
    return [m for m in OWN_MIGRATIONS if m.version_key > low]


def _ms(seconds: float) -> str:
    return f"{max(int(seconds * 1000), 1)}ms"


@final
class Migrator:
    """Runs migrations of plugins on ``pool``; progress shown by ``progress`` per stage.

    ``lock`` is the migration lock (by default a ``MigrationLock`` waiting ``lock_wait``
    seconds): ``run`` and ``undo`` take it for their duration unless it is held already
    (``PluginManager`` holds it across a whole upgrade), and fence every transaction with it.
    """

    __slots__ = ("_bus", "_env", "_pool", "_progress", "lock")

    def __init__(
        self,
        pool: asyncpg.Pool,
        env: Environment,
        *,
        bus: Any = None,
        progress: ProgressFactory | None = None,
        lock: FencedLock | None = None,
        lock_wait: float = 30.0,
    ) -> None:
        self._pool = pool
        self._env = env
        self._bus = bus
        self._progress: ProgressFactory = progress or (
            lambda title, total, done: open_progress(title, total, done)
        )
        self.lock: Final = lock if lock is not None else MigrationLock(pool, wait=lock_wait)

    @asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """Hold the migration lock for the block, unless it is held already."""
        if self.lock.held:
            yield
            return
        async with self.lock:
            yield

    @asynccontextmanager
    async def fenced(self, target: Any) -> AsyncIterator[AsyncpgTransaction]:
        """A transaction scope on ``target`` (a pool or a connection), fenced by the lock."""
        async with transaction(target, find_outcome=False) as tx:
            await self.lock.fence(tx.connection)
            yield tx

    async def create_tables(self) -> None:
        """Create or upgrade hookbus's own tables, under the lock (see ``own_plan``)."""
        async with self.locked():
            await self._own_tables()

    async def _own_tables(self) -> None:
        # hookbus's own tables are a plugin's: layout 1.0 made if missing, then migrated.
        async with self.fenced(self._pool) as tx:
            await create_tables(tx.connection)
            state = (await read_states(tx.connection, own=True)).get(OWN)
        installed = BASE_VERSION if state is None or state.version is None else state.version
        if state is not None and state.state == "installed" and installed == OWN_VERSION:
            return
        if parse_version(installed) > parse_version(OWN_VERSION):
            raise PluginStateError(
                f"hookbus's tables are at layout {installed}, newer than this hookbus knows "
                f"({OWN_VERSION}): run a newer hookbus"
            )
        was = None if state is None else state.state
        doing: PluginStateName = (
            "installing" if state is None or state.version is None else ("upgrading")
        )
        async with self.fenced(self._pool) as tx:
            await write_state(
                tx.connection, OWN, was=was, version=None if state is None else state.version,
                target=OWN_VERSION, state=doing, requires=(),
            )  # fmt: skip
        for migration in _own_migrations(installed):
            await self._run(OWN, migration, revisit=False)
        async with self.fenced(self._pool) as tx:
            await write_state(
                tx.connection, OWN, was=doing, version=OWN_VERSION, target=OWN_VERSION,
                state="installed", requires=(),
            )  # fmt: skip
        logger.info("hookbus's tables: layout %s, from %s", OWN_VERSION, installed)

    async def own_plan(self) -> list[PlannedStage]:
        """What ``create_tables`` would run now to bring hookbus's own tables up to date."""
        async with self._pool.acquire() as conn:
            state = (await read_states(conn, own=True)).get(OWN)
        installed = BASE_VERSION if state is None or state.version is None else state.version
        return await self.plan(OWN, _own_migrations(installed))

    async def plan(
        self, plugin: str, migrations: Sequence[Migration], *, revisit: bool = False
    ) -> list[PlannedStage]:
        """What ``run`` would do now, stage by stage, without doing any of it.

        ``revisit``: the migrations are at or below the plugin's installed version (only the
        stages once skipped by their condition may run); only the stages that would run are
        listed then.
        """
        async with self._pool.acquire() as conn:
            steps = [
                step
                for migration in migrations
                for step in await self._steps(conn, plugin, migration, revisit=revisit)
            ]
        return [
            PlannedStage(
                plugin,
                step.migration.version,
                step.stage.name,
                step.stage.kind,
                step.action,
                step.detail,
            )
            for step in steps
            if not revisit or step.action in _RUNS
        ]

    async def _steps(
        self, conn: Any, plugin: str, migration: Migration, *, revisit: bool
    ) -> list[_Step]:
        """The plan of ``migration``: each stage's record and what to do with it now."""
        exists = await conn.fetchval("SELECT to_regclass('hookbus_stage') IS NOT NULL")
        steps = []
        for position, stage in enumerate(migration.stages):
            record = StageRecord(plugin, migration.version, stage.name, position, stage.kind)
            status, cursor, rows, batches = (
                await record.read(conn) if exists else (None, None, 0, 0)
            )
            action, detail = decide(stage, status, cursor, rows, self._env, revisit=revisit)
            steps.append(_Step(migration, stage, record, action, detail, cursor, rows, batches))
        return steps

    async def run(self, plugin: str, migration: Migration, *, revisit: bool = False) -> None:
        """Run the stages of ``migration`` that its plan says to run, in order, under the lock.

        The plan is ``plan``'s, computed once the lock is held (see ``decide``).
        """
        async with self.locked():
            await self._own_tables()
            await self._run(plugin, migration, revisit=revisit)

    async def _run(self, plugin: str, migration: Migration, *, revisit: bool) -> None:
        async with self._pool.acquire() as conn:
            steps = await self._steps(conn, plugin, migration, revisit=revisit)
        for step in steps:
            stage, record = step.stage, step.record
            where = f"{plugin} {migration.version} / {stage.name}"
            if step.action == "skip (condition)" and not revisit:
                logger.info("%s: skipped, its condition is false in %r", where, self._env)
                async with self.fenced(self._pool) as tx:
                    await record.finish(tx.connection, "skipped", 0.0)
                continue
            if step.action not in _RUNS:
                logger.info("%s: %s", where, step.action)
                continue
            logger.info("%s: %s", where, "resumed" if step.action == "resume" else "started")
            if isinstance(stage, Stage):
                await self._atomic(where, plugin, stage, record)
            else:
                await self._batched(
                    where, plugin, stage, record, step.cursor, step.rows, step.batches
                )

    async def _atomic(self, where: str, plugin: str, stage: Stage, record: StageRecord) -> None:
        started = time.perf_counter()
        try:
            async with self.fenced(self._pool) as tx:  # committed apart: seen while it runs
                await record.start(tx.connection, None)
            async with self.fenced(self._pool) as tx:
                await _timeouts(tx.connection, stage)
                ctx = StageContext(tx, self._env, plugin, self._bus)
                await stage.run(ctx)
                await _validate(stage, ctx)
                await record.finish(tx.connection, "completed", time.perf_counter() - started)
        except Exception as exc:
            await self._failed(where, record, started, exc)
        logger.info("%s: completed in %.2f s", where, time.perf_counter() - started)

    async def undo(self, plugin: str, migration: Migration, stage_name: str) -> int:
        """Revert a batched stage's committed batches with its ``undo``, newest first.

        Each batch is undone in a transaction of its own that also marks its row ``undone``
        and moves the stage's cursor back before it: interrupted, an undo resumes where it
        stopped, and a ``run`` redoes exactly the batches undone. Atomic stages and stages
        without ``undo`` cannot be undone (``MigrationError``). Returns the batches undone.
        """
        position, stage = next(
            ((i, s) for i, s in enumerate(migration.stages) if s.name == stage_name),
            (-1, None),
        )
        where = f"{plugin} {migration.version} / {stage_name}"
        if not isinstance(stage, BatchedStage) or stage.undo is None:
            what = "no such stage" if stage is None else "it declares no undo"
            raise MigrationError(f"{where} cannot be undone: {what}")
        record = StageRecord(plugin, migration.version, stage.name, position, stage.kind)
        undone = 0
        async with self.locked(), self._pool.acquire() as conn:
            async with self.fenced(conn):
                await _timeouts(conn, stage)
                key_type = await _key_type(conn, where, stage)
                done = await record.done_batches(conn)
            for number, after, last, rows in done:
                started = time.perf_counter()
                async with self.fenced(conn) as tx:
                    await _timeouts(conn, stage)
                    keys = await conn.fetchrow(
                        f"SELECT $1::text::{key_type}, $2::text::{key_type}", after, last
                    )
                    await stage.undo(Batch(tx, self._env, keys[0], keys[1], rows, number))
                    await record.batch_undone(
                        conn, number, after, rows, time.perf_counter() - started
                    )
                undone += 1
        logger.info("%s: %d batch(es) undone", where, undone)
        return undone

    async def _failed(
        self, where: str, record: StageRecord, started: float, exc: Exception
    ) -> NoReturn:
        error = f"{type(exc).__name__}: {exc}"
        try:
            async with transaction(self._pool, find_outcome=False) as tx:
                await self._record_failure(
                    tx.connection,
                    record,
                    error,
                    record.finish(tx.connection, "failed", time.perf_counter() - started, error),
                )
        except Exception as lost:  # e.g. the database itself is gone
            exc.add_note(f"the failure could not be recorded: {lost!r}")
        logger.error("%s: failed: %s", where, error)
        raise MigrationError(f"{where} failed: {error}") from exc

    async def _record_failure(self, conn: Any, record: StageRecord, error: str, write: Any) -> None:
        """Keep ``error`` in the history; run ``write`` (the stage's failure) unless another
        migrator took the lock meanwhile (the stage is its own then)."""
        token = self.lock.token
        await record.error(conn, token, error)
        if await self.lock.still_current(conn):
            await write
        else:
            write.close()
            logger.warning("the migration lock was taken over: the stage is left to its holder")

    async def _batched(
        self,
        where: str,
        plugin: str,
        stage: BatchedStage,
        record: StageRecord,
        cursor: str | None,
        rows: int,
        batches: int,
    ) -> None:
        started = time.perf_counter()
        # One connection for the whole stage: a pooled connection per batch would cost the
        # pool's reset round trip on every release.
        async with self._pool.acquire() as conn:
            try:
                async with self.fenced(conn):
                    # Under the stage's timeouts: the count waits on the table's locks too.
                    await _timeouts(conn, stage)
                    pages = await _Pages.prepare(conn, where, stage, cursor)
                    await record.start(conn, rows + pages.left)
            except Exception as exc:
                await self._failed(where, record, started, exc)
            progress = self._progress(where, rows + pages.left, rows)
            number = batches
            untouched: list[int] = []
            try:
                while True:
                    batch_started = time.perf_counter()
                    try:
                        # A COMMIT lost with its connection needs no finding out: the rerun
                        # reads the cursor, saved by this very transaction or not at all.
                        async with self.fenced(conn) as tx:
                            await _timeouts(conn, stage)
                            last, last_text, count, began = await pages.next(conn)
                            if count == 0:
                                break
                            batch = Batch(tx, self._env, pages.after, last, count, number + 1)
                            await stage.apply(batch)
                            touched = await record.batch_done(
                                conn, number + 1, pages.cursor, last_text, count,
                                time.perf_counter() - batch_started, self.lock.token, began,
                                pages.touched(last, count),
                            )  # fmt: skip
                            if touched == 0:
                                untouched.append(number + 1)
                    except Exception as exc:
                        error = (
                            f"batch {number + 1} after key {pages.cursor}: "
                            f"{type(exc).__name__}: {exc}"
                        )
                        # On the stage's own connection (its batch rolled back): a pool of
                        # two connections, the lock's and this one, is enough.
                        try:
                            # tx.connection first: a scope begins at its first statement.
                            async with transaction(conn, find_outcome=False) as tx:
                                await self._record_failure(
                                    tx.connection,
                                    record,
                                    error,
                                    record.batch_failed(
                                        conn, number + 1, pages.cursor,
                                        time.perf_counter() - batch_started, error,
                                        self.lock.token,
                                    ),
                                )  # fmt: skip
                        except Exception as lost:  # e.g. the connection itself was lost
                            exc.add_note(f"the failure could not be recorded: {lost!r}")
                        logger.error("%s: failed: %s", where, error)
                        raise MigrationError(f"{where} failed: {error}") from exc
                    number += 1
                    pages.moved(last, last_text)
                    progress.advance(count)
            finally:
                progress.close()
        if untouched:
            # Recorded (hookbus_batch.touched = 0) and said once, at the end of the stage.
            logger.warning(
                "%s: %d batch(es) changed none of the rows of their page (batches %s): does "
                "apply read batch.after, which is None for the first batch?",
                where, len(untouched), _ranges(untouched),
            )  # fmt: skip
        validating = time.perf_counter()
        try:
            async with self.fenced(self._pool) as tx:
                await _timeouts(tx.connection, stage)
                await _validate(stage, StageContext(tx, self._env, plugin, self._bus))
                await record.finish(tx.connection, "completed", time.perf_counter() - validating)
        except Exception as exc:
            await self._failed(where, record, validating, exc)
        logger.info("%s: completed in %.2f s", where, time.perf_counter() - started)


@final
class _Pages:
    """The keyset pages of a batched stage: ``WHERE key > cursor ORDER BY key LIMIT n``."""

    __slots__ = (
        "_first",
        "_next",
        "_size",
        "_touched_first",
        "_touched_next",
        "after",
        "cursor",
        "left",
    )

    def __init__(self, stage: BatchedStage, key_type: str) -> None:
        table, key = _quoted(stage.table), f'"{stage.key}"'
        page = f"SELECT {key} FROM {table} WHERE {key} IS NOT NULL ORDER BY {key} LIMIT $1"
        after = f"SELECT {key} FROM {table} WHERE {key} > $2::{key_type} ORDER BY {key} LIMIT $1"
        # (with the server's clock: when the batch began, once fenced)
        last = "SELECT max(k), max(k)::text, count(*), clock_timestamp() FROM ({}) AS b(k)"
        self._first = last.format(page)
        self._next = last.format(after)
        # The page's rows the batch changed: those it wrote (their xmin is this transaction,
        # or one of its subtransactions: age <= 0) and those it deleted (no longer there).
        # A subquery of the statement recording the batch, from its 11th parameter on.
        touched = (
            "(SELECT $11::bigint - count(*) + count(*) FILTER (WHERE age(xmin) <= 0) "
            f"FROM {table} WHERE {key} <= $12::{key_type}"
        )
        self._touched_first = touched + f" AND {key} IS NOT NULL)"
        self._touched_next = touched + f" AND {key} > $13::{key_type})"
        self._size = stage.batch_size
        self.after: Any = None  # the last key done, as the column's type
        self.cursor: str | None = None  # the same, as text: what the progress row keeps
        self.left = 0

    @classmethod
    async def prepare(
        cls, conn: Any, where: str, stage: BatchedStage, cursor: str | None
    ) -> _Pages:
        key_type = await _key_type(conn, where, stage)
        if not await conn.fetchval(_KEY_UNIQUE, stage.table, stage.key):
            raise MigrationError(
                f"{where}: the key {stage.key!r} of {stage.table!r} is not unique: no primary "
                "key, unique constraint or unique index on that column alone. Batches paged "
                "by a key that repeats miscount their rows (and a page may end between equal "
                "keys): page by a unique column"
            )
        pages = cls(stage, key_type)
        table, key = _quoted(stage.table), f'"{stage.key}"'
        if cursor is None:
            pages.left = await conn.fetchval(f"SELECT count({key}) FROM {table}")
        else:
            pages.after = await conn.fetchval(f"SELECT $1::text::{key_type}", cursor)
            pages.cursor = cursor
            pages.left = await conn.fetchval(
                f"SELECT count(*) FROM {table} WHERE {key} > $1", pages.after
            )
        return pages

    async def next(self, conn: Any) -> tuple[Any, str, int, datetime]:
        """The next page's last key (typed and as text), its row count (0: no more), and the
        server's clock."""
        if self.after is None:
            row = await conn.fetchrow(self._first, self._size)
        else:
            row = await conn.fetchrow(self._next, self._size, self.after)
        return row[0], row[1], row[2], row[3]

    def touched(self, last: Any, count: int) -> tuple[str, tuple[Any, ...]]:
        """SQL counting the page's rows the batch changed (wrote or deleted), and its
        arguments from the 11th on: what ``StageRecord.batch_done`` records."""
        if self.after is None:
            return self._touched_first, (count, last)
        return self._touched_next, (count, last, self.after)

    def moved(self, last: Any, last_text: str) -> None:
        """The page ending at ``last`` was committed."""
        self.after, self.cursor = last, last_text


async def _key_type(conn: Any, where: str, stage: BatchedStage) -> str:
    key_type: str | None = await conn.fetchval(_KEY_TYPE, stage.table, stage.key)
    if key_type is None:
        raise MigrationError(f"{where}: no column {stage.key!r} in {stage.table!r}")
    return key_type


def _settings(stage: Stage | BatchedStage) -> list[str]:
    return [
        f"set_config('{name}', '{_ms(value)}', true)"
        for name, value in (
            ("lock_timeout", stage.lock_timeout),
            ("statement_timeout", stage.statement_timeout),
        )
        if value is not None
    ]


async def _timeouts(conn: Any, stage: Stage | BatchedStage) -> None:
    """Set the stage's timeouts for the transaction ``conn`` is in (SET LOCAL)."""
    settings = _settings(stage)
    if settings:
        await conn.execute(f"SELECT {', '.join(settings)}")


async def _validate(stage: Stage | BatchedStage, ctx: StageContext) -> None:
    if stage.validate is not None and await stage.validate(ctx) is False:
        raise MigrationError(f"validation {getattr(stage.validate, '__name__', '')} failed")


def _ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and spans[-1][1] == n - 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _quoted(table: str) -> str:
    return ".".join(f'"{part}"' for part in table.split("."))
