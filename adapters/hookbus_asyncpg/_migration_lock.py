"""One migrator at a time: a session-level advisory lock held on a dedicated connection.

A session-level lock (not a transaction-level one) stays held across the many transactions
of a migration, and goes with its connection: if the migrator's process dies, the server
drops the lock with the session. A second migrator waits up to ``wait`` seconds, then fails
with ``MigrationLockTimeout`` naming the holder as ``pg_stat_activity`` shows it.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from types import TracebackType
from typing import Any, Final, final

import asyncpg

from hookbus import HookbusError

__all__ = ["MigrationLock", "MigrationLockTimeout"]

# pg_advisory_lock(int4, int4): the first half says "hookbus", the second "migrations".
_CLASS: Final = 0x686B6273  # "hkbs"
_OBJECT: Final = 1
_HOLDER: Final = """
SELECT a.pid, a.application_name, a.client_addr::text AS client, a.query_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1 AND l.objid = $2
  AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database
                                       WHERE datname = current_database())
"""


class MigrationLockTimeout(HookbusError):
    """Another migrator held the lock for longer than this one would wait."""

    def __init__(
        self,
        wait: float,
        pid: int | None,
        application: str | None,
        since: datetime | None,
        client: str | None,
    ) -> None:
        self.pid: Final = pid
        self.application_name: Final = application
        self.since: Final = since
        if pid is None:
            holder = "a migrator that released it as this one gave up"
        else:
            holder = (
                f"backend pid {pid}, application_name {application!r}, client {client or 'local'}"
                f", holding it since {since:%Y-%m-%d %H:%M:%S %Z}".rstrip()
                if since is not None
                else f"backend pid {pid}, application_name {application!r}"
            )
        super().__init__(
            f"another migrator holds the migration lock ({holder}); waited {wait:g} s. "
            "Run again once it is done, or end it (pg_terminate_backend) if it is stuck."
        )


@final
class MigrationLock:
    """``async with MigrationLock(pool, wait=30):`` holds the migration lock for the block.

    The lock is taken on a connection of its own, from ``pool``, kept until the block ends.
    """

    __slots__ = ("_conn", "_pool", "wait")

    def __init__(self, pool: asyncpg.Pool, *, wait: float = 30.0) -> None:
        if wait < 0:
            raise ValueError(f"wait is seconds >= 0, not {wait!r}")
        self._pool = pool
        self.wait: Final = wait
        self._conn: Any = None

    async def __aenter__(self) -> MigrationLock:
        conn = await self._pool.acquire()
        try:
            # The wait is bounded by the server: lock_timeout covers advisory locks too.
            # It is this session's setting only, reset once the lock is held, before any
            # migration statement runs (which set their own, per stage, in their transaction).
            await conn.execute(f"SET lock_timeout = {max(int(self.wait * 1000), 1)}")
            try:
                await conn.execute("SELECT pg_advisory_lock($1, $2)", _CLASS, _OBJECT)
            except asyncpg.LockNotAvailableError:
                raise await self._timeout(conn) from None
            # The last statement on this connection: its query_start says since when it holds.
            name = f"hookbus migrator pid {os.getpid()} on {socket.gethostname()}"[:63]
            await conn.execute(f"RESET lock_timeout; SET application_name = '{_quote(name)}'")
        except BaseException:
            await self._pool.release(conn)  # the pool's reset unlocks all advisory locks
            raise
        self._conn = conn
        return self

    async def _timeout(self, conn: Any) -> MigrationLockTimeout:
        row = await conn.fetchrow(_HOLDER, _CLASS, _OBJECT)
        if row is None:
            return MigrationLockTimeout(self.wait, None, None, None, None)
        return MigrationLockTimeout(
            self.wait, row["pid"], row["application_name"], row["query_start"], row["client"]
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        try:
            if not conn.is_closed():
                await conn.execute("SELECT pg_advisory_unlock($1, $2)", _CLASS, _OBJECT)
        finally:
            await self._pool.release(conn)


def _quote(text: str) -> str:
    return text.replace("'", "''")


async def lock_holder(conn: Any) -> tuple[int, str, datetime | None] | None:
    """The migrator holding the lock now: ``(pid, application_name, since)``, or None."""
    row = await conn.fetchrow(_HOLDER, _CLASS, _OBJECT)
    return None if row is None else (row["pid"], row["application_name"], row["query_start"])
