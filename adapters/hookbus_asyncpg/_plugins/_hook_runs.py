"""Records of a plugin's lifecycle hooks and of every failure, for ``hookbus status``.

``hookbus_hook_run`` keeps one row per run of ``pre_init``, ``post_init``, ``post_upgrade`` or
``uninstall``: its status, its interval by the server's clock, its duration, its error. A run
that completes is recorded in the transaction of its work (so it is there if and only if the
work committed); one that fails is recorded after that transaction rolled back.
``hookbus_error`` keeps every failure's error with its time, a stage's, a batch's or a hook's
(a stage row keeps only its last error).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal, final

import msgspec

__all__ = ["ErrorRecord", "HookRun", "read_errors", "read_hook_runs", "record_error", "record_hook"]

HookName = Literal["pre_init", "post_init", "post_upgrade", "uninstall"]

_RECORD: Final = """
INSERT INTO hookbus_hook_run (plugin, version, hook, status, started_at, finished_at,
                              duration, error, token)
VALUES ($1, $2, $3, $4, clock_timestamp() - make_interval(secs => $5), clock_timestamp(),
        $5, $6, $7)
"""
_ERROR: Final = """
INSERT INTO hookbus_error (plugin, version, step, token, error) VALUES ($1, $2, $3, $4, $5)
"""
_READ_RUNS: Final = """
SELECT plugin, version, hook, status, started_at, finished_at, duration, error
FROM hookbus_hook_run WHERE ($1::text IS NULL OR plugin = $1) ORDER BY id
"""
_READ_ERRORS: Final = """
SELECT plugin, version, step, at, error
FROM hookbus_error WHERE ($1::text IS NULL OR plugin = $1) ORDER BY id
"""


@final
class HookRun(msgspec.Struct, frozen=True):
    """A run of one lifecycle hook of one plugin: what ran, how long, how it ended."""

    plugin: str
    version: str | None
    hook: str
    status: Literal["completed", "failed"]
    started_at: datetime
    finished_at: datetime
    duration: float
    error: str | None


@final
class ErrorRecord(msgspec.Struct, frozen=True):
    """A failure kept with its time: ``step`` is the stage or the lifecycle hook."""

    plugin: str
    version: str | None
    step: str
    at: datetime
    error: str


async def record_hook(
    conn: Any,
    plugin: str,
    version: str | None,
    hook: HookName,
    status: Literal["completed", "failed"],
    duration: float,
    error: str | None,
    token: int | None,
) -> None:
    """Record a run of ``hook`` that ended ``duration`` seconds after it started, just now."""
    await conn.execute(_RECORD, plugin, version, hook, status, duration, error, token)


async def record_error(
    conn: Any, plugin: str, version: str | None, step: str, token: int | None, error: str
) -> None:
    """Keep ``error`` with its time in the error history."""
    await conn.execute(_ERROR, plugin, version, step, token, error)


async def _exists(conn: Any, table: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table))


async def read_hook_runs(conn: Any, plugin: str | None = None) -> list[HookRun]:
    """Every run of a lifecycle hook (of ``plugin``, or all), oldest first."""
    if not await _exists(conn, "hookbus_hook_run"):
        return []
    return [HookRun(**dict(row)) for row in await conn.fetch(_READ_RUNS, plugin)]


async def read_errors(conn: Any, plugin: str | None = None) -> list[ErrorRecord]:
    """Every failure recorded (of ``plugin``, or all), oldest first."""
    if not await _exists(conn, "hookbus_error"):
        return []
    return [ErrorRecord(**dict(row)) for row in await conn.fetch(_READ_ERRORS, plugin)]
