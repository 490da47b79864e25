"""Migration progress rows: what each stage and each batch recorded, in its own transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal, final

import msgspec

from ._hook_runs import record_error

__all__ = ["StageProgress", "read_progress", "skipped_stages"]

StageStatus = Literal["running", "completed", "failed", "skipped", "undone"]

_READ_ONE: Final = """
SELECT status, cursor, rows, batches FROM hookbus_stage
WHERE plugin = $1 AND version = $2 AND stage = $3
"""
_UNTOUCHED: Final = """(SELECT count(*) FROM hookbus_batch b
        WHERE (b.plugin, b.version, b.stage) = (s.plugin, s.version, s.stage)
          AND b.status = 'completed' AND b.touched = 0)"""
# Layout 1.0 (before hookbus migrated its own tables to 2.0) has no hookbus_batch.touched.
_HAS_TOUCHED: Final = """
SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'hookbus_batch'::regclass
               AND attname = 'touched' AND NOT attisdropped)
"""
_READ_ALL: Final = """
SELECT plugin, version, stage, position, kind, status, cursor, rows, total, batches, duration,
       started_at, updated_at, finished_at, error,
       {untouched} AS untouched
FROM hookbus_stage s WHERE ($1::text IS NULL OR plugin = $1)
ORDER BY plugin, string_to_array(version, '.')::int[], position
"""
# Marks a stage as started (or restarted): a row to see while it runs, and the batch rows' parent.
_START: Final = """
INSERT INTO hookbus_stage (plugin, version, stage, position, kind, status, total, started_at,
                           updated_at)
VALUES ($1, $2, $3, $4, $5, 'running', $6, clock_timestamp(), clock_timestamp())
ON CONFLICT (plugin, version, stage) DO UPDATE SET
    status = 'running', total = EXCLUDED.total, error = NULL, updated_at = clock_timestamp(),
    finished_at = NULL
"""
_FINISH: Final = """
INSERT INTO hookbus_stage AS s (plugin, version, stage, position, kind, status, duration,
                                finished_at, error)
VALUES ($1, $2, $3, $4, $5, $6, $7, clock_timestamp(), $8)
ON CONFLICT (plugin, version, stage) DO UPDATE SET
    status = EXCLUDED.status, duration = s.duration + EXCLUDED.duration,
    updated_at = EXCLUDED.finished_at, finished_at = EXCLUDED.finished_at, error = EXCLUDED.error
"""
# One round trip records a batch: its row, and the stage's cursor and counters.
_BATCH_DONE: Final = """
WITH stage AS (
    UPDATE hookbus_stage SET cursor = $6, rows = rows + $7, batches = batches + 1,
                             duration = duration + $8, updated_at = clock_timestamp()
    WHERE plugin = $1 AND version = $2 AND stage = $3
)
INSERT INTO hookbus_batch (plugin, version, stage, number, after_key, last_key, rows,
                           status, duration, token, started_at, touched, committed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, 'completed', $8, $9, $10, {touched}, clock_timestamp())
RETURNING touched
"""
_BATCH_FAILED: Final = """
WITH stage AS (
    UPDATE hookbus_stage SET status = 'failed', error = $8, updated_at = clock_timestamp(),
                             duration = duration + $7
    WHERE plugin = $1 AND version = $2 AND stage = $3
)
INSERT INTO hookbus_batch (plugin, version, stage, number, after_key, rows, status,
                           duration, error, token)
VALUES ($1, $2, $3, $4, $5, $6, 'failed', $7, $8, $9)
"""

_DONE_BATCHES: Final = """
SELECT number, after_key, last_key, rows FROM hookbus_batch
WHERE plugin = $1 AND version = $2 AND stage = $3 AND status = 'completed'
ORDER BY number DESC
"""
# One round trip undoes a batch's record: the batch row, and the stage moved back before it.
_BATCH_UNDONE: Final = """
WITH batch AS (
    UPDATE hookbus_batch SET status = 'undone'
    WHERE plugin = $1 AND version = $2 AND stage = $3 AND number = $4 AND status = 'completed'
)
UPDATE hookbus_stage SET status = 'undone', cursor = $5, rows = rows - $6,
                         batches = batches - 1, duration = duration + $7,
                         updated_at = clock_timestamp(), finished_at = NULL, error = NULL
WHERE plugin = $1 AND version = $2 AND stage = $3
"""


@final
class StageProgress(msgspec.Struct, frozen=True):
    """A row of ``hookbus_stage``: how far one stage of one migration went."""

    plugin: str
    version: str
    stage: str
    position: int
    kind: str
    status: StageStatus
    cursor: str | None
    rows: int
    total: int | None
    batches: int
    duration: float
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    error: str | None
    untouched: int = 0  # committed batches that changed none of the rows of their page


@final
class StageRecord:
    """The progress statements of one stage, bound to its identity."""

    __slots__ = ("_ident", "_kind", "_position")

    def __init__(self, plugin: str, version: str, stage: str, position: int, kind: str) -> None:
        self._ident = (plugin, version, stage)
        self._position = position
        self._kind = kind

    async def read(self, conn: Any) -> tuple[StageStatus | None, str | None, int, int]:
        """``(status, cursor, rows, batches)``; status None when the stage never started."""
        row = await conn.fetchrow(_READ_ONE, *self._ident)
        if row is None:
            return None, None, 0, 0
        return row["status"], row["cursor"], row["rows"], row["batches"]

    async def start(self, conn: Any, total: int | None) -> None:
        """Mark the stage running (committed on its own: visible while it runs)."""
        await conn.execute(_START, *self._ident, self._position, self._kind, total)

    async def finish(
        self, conn: Any, status: StageStatus, duration: float, error: str | None = None
    ) -> None:
        """Mark the stage completed, failed or skipped, in the transaction ``conn`` is in."""
        await conn.execute(
            _FINISH, *self._ident, self._position, self._kind, status, duration, error
        )

    async def batch_done(
        self,
        conn: Any,
        number: int,
        after: str | None,
        last: str,
        rows: int,
        duration: float,
        token: int,
        started_at: datetime,
        touched: tuple[str, tuple[Any, ...]],
    ) -> int:
        """Record a batch and move the cursor, in the batch's own transaction.

        The batch's interval runs from ``started_at`` (the server's clock once the batch was
        fenced) to the server's clock now, just before its COMMIT. ``touched`` is the SQL
        counting the rows of its page it changed, and its arguments from ``$11``: that count
        is recorded and returned (one round trip for all of it).
        """
        sql, args = touched
        recorded: int = await conn.fetchval(
            _BATCH_DONE.format(touched=sql), *self._ident, number, after, last, rows, duration,
            token, started_at, *args,
        )  # fmt: skip
        return recorded

    async def batch_failed(
        self, conn: Any, number: int, after: str | None, duration: float, error: str, token: int
    ) -> None:
        """Record a failed batch attempt and fail the stage (after the batch rolled back)."""
        await conn.execute(_BATCH_FAILED, *self._ident, number, after, 0, duration, error, token)

    async def error(self, conn: Any, token: int | None, error: str) -> None:
        """Keep ``error`` with its time in the stage's error history."""
        await record_error(conn, *self._ident, token, error)

    async def done_batches(self, conn: Any) -> list[tuple[int, str | None, str, int]]:
        """The committed batches, newest first: ``(number, after_key, last_key, rows)``."""
        return [tuple(row) for row in await conn.fetch(_DONE_BATCHES, *self._ident)]

    async def batch_undone(
        self, conn: Any, number: int, after: str | None, rows: int, duration: float
    ) -> None:
        """Mark a batch undone and move the cursor back, in the undo's own transaction."""
        await conn.execute(_BATCH_UNDONE, *self._ident, number, after, rows, duration)


async def skipped_stages(conn: Any, plugin: str) -> set[tuple[str, str]]:
    """``(version, stage)`` of the plugin's stages recorded ``skipped`` (or failed since)."""
    if not await conn.fetchval("SELECT to_regclass('hookbus_stage') IS NOT NULL"):
        return set()
    rows = await conn.fetch(
        "SELECT version, stage FROM hookbus_stage WHERE plugin = $1 AND status <> 'completed'",
        plugin,
    )
    return {(row["version"], row["stage"]) for row in rows}


async def read_progress(conn: Any, plugin: str | None = None) -> list[StageProgress]:
    """Every stage row (of ``plugin``, or all), in plugin, version and stage order."""
    if not await conn.fetchval("SELECT to_regclass('hookbus_stage') IS NOT NULL"):
        return []
    untouched = _UNTOUCHED if await conn.fetchval(_HAS_TOUCHED) else "0"
    query = _READ_ALL.format(untouched=untouched)
    return [StageProgress(**dict(row)) for row in await conn.fetch(query, plugin)]
