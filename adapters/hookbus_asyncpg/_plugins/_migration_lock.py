"""One migrator at a time: the fenced lock named ``hookbus.migrations``.

A session-level lock (not a transaction-level one) stays held across the many transactions
of a migration, and goes with its connection: if the migrator's process dies, the server
drops the lock with the session. A second migrator waits up to ``wait`` seconds, then fails
with ``MigrationLockTimeout`` naming the holder as ``pg_stat_activity`` shows it. The
migrator fences each of its transactions with the lock's token (see ``FencedLock``), so a
migrator whose lock connection was lost commits nothing more once another took over.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from typing import Any, Final, final

import asyncpg

from ._fenced_lock import FencedLock, LockTimeoutError, _holder, advisory_key

__all__ = ["MIGRATION_LOCK", "MigrationLock", "MigrationLockTimeout", "lock_holder"]

#: The name of the migration lock.
MIGRATION_LOCK: Final = "hookbus.migrations"


class MigrationLockTimeout(LockTimeoutError):
    """Another migrator held the lock for longer than this one would wait."""


@final
class MigrationLock(FencedLock):
    """``async with MigrationLock(pool, wait=30):`` holds the migration lock for the block.

    The ``FencedLock`` named ``hookbus.migrations``; its connection shows itself as
    ``hookbus migrator pid N on HOST``.
    """

    __slots__ = ()
    doing = "migrator"
    _timeout_error = MigrationLockTimeout

    def __init__(self, pool: asyncpg.Pool, *, wait: float = 30.0) -> None:
        name = f"hookbus migrator pid {os.getpid()} on {socket.gethostname()}"
        super().__init__(pool, MIGRATION_LOCK, wait=wait, application_name=name)


async def lock_holder(conn: Any) -> tuple[int, str, datetime | None] | None:
    """The migrator holding the lock now: ``(pid, application_name, since)``, or None."""
    holder = await _holder(conn, MIGRATION_LOCK, advisory_key(MIGRATION_LOCK))
    return None if holder is None else (holder.pid, holder.application_name, holder.since)
