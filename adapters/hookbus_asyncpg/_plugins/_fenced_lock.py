"""A named lock across processes whose holder fences every transaction it commits.

``async with FencedLock(pool, name, wait=30):`` takes a session advisory lock on a
connection of its own (kept for the block), then bumps the name's token in the table
``hookbus_locks`` from that connection: ``lock.token`` is strictly greater than the token of
every earlier holder of the name. ``await lock.fence(conn)``, inside the caller's transaction
on any other connection, reads the name's row ``FOR SHARE`` where the token is still this
holder's, else raises ``LockLostError``.

Why a token and not only the advisory lock: the advisory lock goes with its session. If the
holder's lock connection dies (a network cut, ``pg_terminate_backend``), the next holder gets
the lock at once, while the first holder's work may still be running on other connections.
The fence closes that gap from both sides:

- a fenced transaction keeps the row share-locked until it ends, so the next holder's token
  bump (an UPDATE of that row) waits for it: whatever the old holder had in flight commits
  before the new holder's first fenced transaction can start;
- the old holder's next fence sees the new token (PostgreSQL re-reads the row once the bump
  committed) and raises ``LockLostError``: none of its later transactions can commit.

What a fenced transaction did outside the database (a message sent, a file written) is not
undone by a failed fence: such effects must be idempotent.

Two holders of the same name inside one process each take the lock from a connection of
their own, so the second waits for the first like any other process would (up to ``wait``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import socket
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar, Final, final

import asyncpg
import msgspec

from hookbus import HookbusError

__all__ = ["FencedLock", "LockHolder", "LockLostError", "LockTimeoutError"]

# pg_advisory_lock(int4, int4): the first key says "hookbus", the second is the name's.
_CLASS: Final = 0x686B6273  # "hkbs"
# The migration lock keeps the key it had before tokens existed: a migrator of an older
# hookbus and a newer one still exclude each other during a rolling deploy.
_FIXED_KEYS: Final = {"hookbus.migrations": 1}

_TABLE: Final = """
CREATE TABLE IF NOT EXISTS hookbus_locks (
    name text PRIMARY KEY,
    token bigint NOT NULL,
    holder text,
    acquired_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""
_TABLE_EXISTS: Final = "SELECT to_regclass('hookbus_locks') IS NOT NULL"
# Locks of different names may create the table at the same moment.
_TABLE_LOCK: Final = "SELECT pg_advisory_xact_lock(hashtext('hookbus_locks'))"
_BUMP: Final = """
INSERT INTO hookbus_locks AS l (name, token, holder) VALUES ($1, 1, $2)
ON CONFLICT (name) DO UPDATE SET token = l.token + 1, holder = EXCLUDED.holder,
                                 acquired_at = clock_timestamp()
RETURNING token
"""
_FENCE: Final = "SELECT 1 FROM hookbus_locks WHERE name = $1 AND token = $2 FOR SHARE"
_HOLDER: Final = """
SELECT a.pid, a.application_name, a.client_addr::text AS client, a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1 AND l.objid = $2
  AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database
                                       WHERE datname = current_database())
"""
_SINCE: Final = "SELECT acquired_at FROM hookbus_locks WHERE name = $1"
# lock_timeout is an int of milliseconds; 0 means no limit.
_MAX_MS: Final = 2**31 - 1


class LockLostError(HookbusError):
    """The lock is no longer this holder's: its connection is gone, or another took it."""


class LockTimeoutError(HookbusError):
    """Another holder kept the lock longer than this one would wait; ``holder`` names it."""

    def __init__(
        self,
        name: str,
        wait: float,
        holder: LockHolder | None,
        doing: str = "holder",
        why: str | None = None,
    ) -> None:
        self.name: Final = name
        self.wait: Final = wait
        self.holder: Final = holder
        why = why or f"another {doing} holds the lock {name!r} ({_describe(holder)})"
        super().__init__(
            f"{why}; waited {wait:g} s. "
            "Run again once it is done, or end it (pg_terminate_backend) if it is stuck."
        )

    @property
    def pid(self) -> int | None:
        """The backend pid of the holder's lock connection, if one was seen."""
        return None if self.holder is None else self.holder.pid

    @property
    def application_name(self) -> str | None:
        """The holder's ``application_name``, if one was seen."""
        return None if self.holder is None else self.holder.application_name

    @property
    def since(self) -> datetime | None:
        """Since when the holder holds the lock, if one was seen."""
        return None if self.holder is None else self.holder.since


@final
class LockHolder(msgspec.Struct, frozen=True):
    """Who holds a lock: its lock connection's backend, as ``pg_stat_activity`` shows it."""

    pid: int
    application_name: str
    client: str | None
    since: datetime | None


def _describe(holder: LockHolder | None) -> str:
    if holder is None:
        return "a holder that released it as this one gave up"
    text = f"backend pid {holder.pid}, application_name {holder.application_name!r}"
    text += f", client {holder.client or 'local'}"
    if holder.since is not None:
        text += f", holding it since {holder.since:%Y-%m-%d %H:%M:%S %Z}".rstrip()
    return text


def advisory_key(name: str) -> int:
    """The second advisory key of ``name`` (the first is hookbus's): a stable 32-bit hash."""
    fixed = _FIXED_KEYS.get(name)
    if fixed is not None:
        return fixed
    digest = hashlib.blake2b(name.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


class FencedLock:
    """``async with FencedLock(pool, name, wait=30.0):`` holds the lock ``name`` for the block.

    ``name`` is any text; ``wait`` bounds the wait for another holder in seconds
    (``math.inf``: no bound), then ``LockTimeoutError`` names that holder. Inside the block,
    ``token`` is this holder's token and ``fence(conn)`` guards a transaction; ``lost`` turns
    true once the lock's connection is gone. ``application_name`` is what the lock's
    connection shows in ``pg_stat_activity`` (and so in another holder's timeout).
    """

    __slots__ = ("_conn", "_key", "_lost", "_pool", "_token", "application_name", "name", "wait")

    #: What a timeout calls the holder ("another migrator holds the lock ...").
    doing: ClassVar[str] = "holder"
    #: The error a timeout raises (a ``LockTimeoutError``).
    _timeout_error: ClassVar[type[LockTimeoutError]] = LockTimeoutError

    def __init__(
        self,
        pool: asyncpg.Pool,
        name: str,
        *,
        wait: float = 30.0,
        application_name: str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ValueError(f"a lock name is non-empty text without NUL, not {name!r}")
        try:
            name.encode()
        except UnicodeEncodeError:
            raise ValueError(f"a lock name is text PostgreSQL can store, not {name!r}") from None
        if (
            isinstance(wait, bool)
            or not isinstance(wait, int | float)
            or math.isnan(wait)
            or wait < 0
        ):
            raise ValueError(f"wait is seconds >= 0 (math.inf: no bound), not {wait!r}")
        self._pool = pool
        self.name: Final = name
        self.wait: Final = float(wait)
        self.application_name: Final = (
            application_name or f"hookbus lock {name} pid {os.getpid()} on {socket.gethostname()}"
        )[:63]
        self._key: Final = advisory_key(name)
        self._conn: Any = None
        self._token: int | None = None
        self._lost = False

    @property
    def token(self) -> int:
        """This holder's token: greater than every earlier holder's of the same name."""
        if self._token is None:
            raise LockLostError(f"the lock {self.name!r} is not held here (enter it first)")
        return self._token

    @property
    def held(self) -> bool:
        """Whether this object is inside its ``async with`` block."""
        return self._token is not None

    @property
    def lost(self) -> bool:
        """True once the lock's connection is gone (it may be held by another already)."""
        conn = self._conn
        if self._lost or conn is None:
            return self._lost
        try:
            return bool(conn.is_closed())
        except asyncpg.InterfaceError:  # the pool detached a pooled connection that died
            return True

    async def fence(self, conn: Any) -> None:
        """Check, in the transaction ``conn`` is in, that this holder still holds the lock.

        Call it inside the transaction it guards (in autocommit it would guard nothing).

        Holds a share lock on the lock's row until that transaction ends: the next holder
        cannot take the lock over before it has committed or rolled back. Raises
        ``LockLostError`` if the lock's connection is gone or another holder took the lock.
        """
        token = self.token
        if self.lost:
            raise LockLostError(f"the lock {self.name!r} was lost with its connection")
        # Not asked first whether ``conn`` is in a transaction: a hookbus scope's
        # ``tx.connection`` begins at its first statement, which this may well be.
        if not await self.still_current(conn):
            raise LockLostError(
                f"the lock {self.name!r} was taken by another holder (this one had token {token})"
            )

    async def still_current(self, conn: Any) -> bool:
        """Whether this holder's token is still the name's, share-locking the row like ``fence``.

        Unlike ``fence``, true for a holder whose lock connection is gone as long as no other
        holder took the lock since: what a holder that lost its lock uses to record its own
        failure without overwriting a new holder's records.
        """
        return await conn.fetchval(_FENCE, self.name, self.token) is not None

    async def holder(self) -> LockHolder | None:
        """Who holds the lock now (this object or another), or None."""
        async with self._pool.acquire() as conn:
            return await _holder(conn, self.name, self._key)

    async def __aenter__(self) -> FencedLock:
        if self._conn is not None:
            raise RuntimeError(f"the lock {self.name!r} is already held by this object")
        conn = await self._pool.acquire()
        self._conn = conn
        self._lost = False
        try:
            token = await self._take(conn)
        except BaseException:
            self._conn = None
            await self._pool.release(conn)  # the pool's reset unlocks all advisory locks
            raise
        conn.add_termination_listener(self._terminated)
        self._token = token
        return self

    async def _take(self, conn: Any) -> int:
        # The wait is bounded by the server: lock_timeout covers advisory locks and the row
        # lock the bump may wait for. It is this session's own setting, reset before return.
        ms = 0 if math.isinf(self.wait) else min(max(int(self.wait * 1000), 1), _MAX_MS)
        await conn.execute(f"SET lock_timeout = {ms}")
        await conn.execute(
            "SELECT set_config('application_name', $1, false)", self.application_name
        )
        try:
            await conn.execute("SELECT pg_advisory_lock($1, $2)", _CLASS, self._key)
        except asyncpg.LockNotAvailableError:
            holder = await _holder(conn, self.name, self._key)
            raise self._timeout_error(self.name, self.wait, holder, self.doing) from None
        try:
            if not await conn.fetchval(_TABLE_EXISTS):
                async with conn.transaction():
                    await conn.execute(_TABLE_LOCK)
                    await conn.execute(_TABLE)
            token: int = await conn.fetchval(_BUMP, self.name, self.application_name)
        except asyncpg.LockNotAvailableError:
            why = (
                f"a transaction fenced by the previous holder of the lock {self.name!r} "
                "was still running"
            )
            raise self._timeout_error(self.name, self.wait, None, self.doing, why) from None
        await conn.execute("RESET lock_timeout")
        return token

    def _terminated(self, conn: Any) -> None:
        self._lost = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lost = self.lost
        conn, self._conn, self._token = self._conn, None, None
        try:
            if not lost:
                conn.remove_termination_listener(self._terminated)
                await conn.execute("SELECT pg_advisory_unlock($1, $2)", _CLASS, self._key)
        except Exception:
            # The connection died before asyncpg said so (the server's goodbye is read, the
            # socket's end not yet): the error of the block, if any, is the one to see. The
            # connection is ended, and the session's lock with it.
            with contextlib.suppress(Exception):
                conn.terminate()
        finally:
            await self._pool.release(conn)  # nothing to do for a connection that died

    def __repr__(self) -> str:
        state = "lost" if self.lost else f"token {self._token}" if self.held else "not held"
        return f"<{type(self).__name__} {self.name!r} {state}>"


async def _holder(conn: Any, name: str, key: int) -> LockHolder | None:
    # pg_locks shows the int4 keys as oids: the same 32 bits, unsigned.
    row = await conn.fetchrow(_HOLDER, _CLASS, key & 0xFFFFFFFF)
    if row is None:
        return None
    since = None
    if await conn.fetchval(_TABLE_EXISTS):
        since = await conn.fetchval(_SINCE, name)
    return LockHolder(row["pid"], row["application_name"], row["client"], since)
