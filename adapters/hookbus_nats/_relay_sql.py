"""What the relay asks PostgreSQL: its cursor, the next batch, what holds it back, the clean-up.

The cursor is ``(xid, id)``: rows are read in ``(xid, id)`` order and only below the gate,
the oldest transaction still running that may write to this database. Below it every
writer of the outbox has ended, so no row can appear there later: a transaction that
commits after one with a higher id is read in its turn instead of being skipped (an ``id``
cursor skips it). xids are compared as ``xid8`` (64 bits, never wrapping); they travel as
text.

The gate (``_GATE``), from the statement's snapshot S (``pg_current_snapshot()``, taken
before the statement runs): the lowest xid of ``pg_snapshot_xip(S)`` (the top-level
transactions in progress at S) that is not positively known to belong to a backend of
another database, else ``pg_snapshot_xmax(S)``. A backend is bound to one database for its
life and its transaction writes only there, so a transaction of another database never
inserts into this outbox: the relay need not wait for it. Known means: the transaction's
xid is a ``pg_stat_activity.backend_xid`` (visible to every role, like ``datid``) of a row
whose ``datid`` is another database's. That view is read after S (the statement runs alone
in its transaction: the status it reads is taken at its first read, after S), so a backend
listed with an xid of S held that xid, and its slot, since before S; a backend that has
moved on to another xid, a prepared transaction (never listed), a subtransaction's xid
(never in ``xip``), a process of no database (``datid`` NULL): none is excluded, and the
relay waits for it as it waits for its own database's. Every xid below the gate is then
either ended at S (its rows, if committed, are visible to S: the statement reads them) or
another database's. The 32-bit ``backend_xid`` is compared with ``xid(x)``: two xids of S
and of the read, equal in their low 32 bits, would be 2^32 transactions apart.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final, TypeAlias, final

import msgspec

__all__ = [
    "Cursor",
    "Holdback",
    "OutboxStatus",
    "Row",
    "claim_batch",
    "cleanup",
    "cursor_of",
    "holdback",
    "load_cursor",
    "look",
    "mark_sent",
    "next_xid",
    "read_batch",
    "reset_cursor",
    "save_cursor",
    "status",
    "unordered_status",
]


@final
class Cursor(msgspec.Struct, frozen=True):
    """The last row published and acknowledged: ``(xid, id)``; ``("0", 0)`` before any."""

    xid: int
    id: int


# An outbox row as the relay reads it: an asyncpg Record of the columns of ``_BATCH``, used
# as it comes (no per-row conversion: the relay is CPU-bound in Python).
Row: TypeAlias = Any
ID, XID, SUBJECT, EVENT, MSG_ID, PAYLOAD, HEADERS = range(7)


@final
class Holdback(msgspec.Struct, frozen=True):
    """What keeps committed rows from the relay: the oldest transaction still running that
    may write to this database (``pid`` and its age; ``pid`` is ``None`` for a prepared
    transaction, named by ``gid``) and how many committed rows wait behind it."""

    rows: int
    pid: int | None
    age: timedelta | None
    state: str | None
    application_name: str | None
    query: str | None
    gid: str | None = None

    def describe(self) -> str:
        """One line for a log or a listing."""
        if self.pid is None and self.gid is None:
            return f"{self.rows} committed row(s) wait behind a transaction that just ended"
        who = f"prepared transaction {self.gid!r}" if self.pid is None else f"pid {self.pid}"
        extra = f" ({self.state}, {self.application_name or 'no application_name'})"
        return (
            f"{self.rows} committed row(s) wait behind the oldest open transaction that may "
            f"write to this database: {who}"
            f"{extra if self.pid is not None else ''}, open for {self.age}"
        )


@final
class OutboxStatus(msgspec.Struct, frozen=True):
    """The outbox as a relay named ``relay`` sees it."""

    relay: str
    cursor: Cursor
    published: int  # rows this relay name has published, ever
    pending: int  # rows past the cursor, committed or not yet below the gate
    oldest_pending: datetime | None  # created_at of the oldest row past the cursor
    lag: timedelta | None  # now - oldest_pending
    rows: int  # rows in the outbox, sent ones kept for the retention included
    updated_at: datetime | None  # when the cursor last moved
    # "unordered": no cursor (``("0", 0)``); published counts the sent rows still kept,
    # pending the rows not marked sent, updated_at the last row marked sent
    mode: str = "ordered"


_LOAD: Final = (
    "INSERT INTO hookbus_outbox_cursor (relay) VALUES ($1) ON CONFLICT (relay) DO NOTHING"
)
_READ_CURSOR: Final = (
    "SELECT xid::text::numeric::bigint, id, published, updated_at "
    "FROM hookbus_outbox_cursor WHERE relay = $1"
)
_SAVE: Final = (
    "UPDATE hookbus_outbox_cursor SET xid = $2::text::xid8, id = $3, "
    "published = published + $4, updated_at = clock_timestamp() WHERE relay = $1"
)
# The gate, a scalar subquery (see the module's docstring); ``ORDER BY x LIMIT 1``, not
# ``min(x)``: PostgreSQL 13 and 14 have no ``min(xid8)``.
_GATE: Final = """(
SELECT coalesce(
    (SELECT x FROM pg_snapshot_xip(snap.s) x
     WHERE x::xid NOT IN (
         SELECT backend_xid FROM pg_stat_activity
         WHERE backend_xid IS NOT NULL
           AND datid <> (SELECT oid FROM pg_database WHERE datname = current_database()))
     ORDER BY x LIMIT 1),
    pg_snapshot_xmax(snap.s))
FROM pg_current_snapshot() AS snap(s))"""
# ``o.xid``, not ``xid``: ORDER BY a bare name takes the output column first, here the text
# ``xid::text`` (which sorts '100' before '99' and lets the cursor pass unsent rows).
_BATCH: Final = f"""\
SELECT o.id, o.xid::text, o.subject, o.event, o.msg_id, o.payload, o.headers::text
FROM hookbus_outbox o
WHERE (o.xid, o.id) > ($1::text::xid8, $2) AND o.xid < {_GATE}
ORDER BY o.xid, o.id
LIMIT $3"""
_NEXT_XID: Final = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::numeric::bigint"
# Committed rows past the cursor at or above the gate (visible, so committed, yet not
# readable) and those below it, readable now (a holder that ended since the relay's last
# read); and the transaction at the gate: a backend's (this database's, or one whose
# database is unknown) or a prepared transaction; none when it ended after the snapshot.
_HOLDBACK: Final = f"""\
WITH gate AS MATERIALIZED (
    SELECT {_GATE} AS xid, pg_snapshot_xmax(pg_current_snapshot()) AS xmax)
SELECT held.held, held.readable,
       h.pid, h.age, h.state, h.application_name, h.query, h.gid
FROM gate CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE o.xid >= gate.xid) AS held,
           count(*) FILTER (WHERE o.xid < gate.xid) AS readable
    FROM hookbus_outbox o WHERE (o.xid, o.id) > ($1::text::xid8, $2)) held
LEFT JOIN LATERAL (
    SELECT pid, now() - xact_start AS age, state, application_name,
           left(query, 200) AS query, NULL::text AS gid
    FROM pg_stat_activity WHERE backend_xid = gate.xid::xid
    UNION ALL
    SELECT NULL, now() - prepared, 'prepared', NULL, NULL, gid
    FROM pg_prepared_xacts WHERE transaction = gate.xid::xid
    LIMIT 1) h ON gate.xid < gate.xmax"""
# Published: marked sent by an unordered relay, or passed by every ordered relay's cursor.
# SKIP LOCKED: unordered relays clean up side by side, each deleting other rows.
_CLEANUP: Final = """\
DELETE FROM hookbus_outbox WHERE id IN (
    SELECT o.id FROM hookbus_outbox o
    WHERE o.created_at < clock_timestamp() - $1::interval
      AND (o.sent_at IS NOT NULL OR (
        EXISTS (SELECT FROM hookbus_outbox_cursor c WHERE (o.xid, o.id) <= (c.xid, c.id))
        AND NOT EXISTS (SELECT FROM hookbus_outbox_cursor c WHERE (o.xid, o.id) > (c.xid, c.id))))
    LIMIT $2 FOR UPDATE OF o SKIP LOCKED)"""
_STATUS: Final = """\
SELECT count(*), min(created_at), clock_timestamp() - min(created_at) FROM hookbus_outbox
WHERE (xid, id) > ($1::text::xid8, $2)"""
# Every row gets the lowest normal xid and the cursor starts over: each row still in the
# outbox is sent again (JetStream and the consumers' inbox drop what they have seen), and
# every row written from now on sorts after them.
_RESET: Final = """\
UPDATE hookbus_outbox SET xid = '3';
UPDATE hookbus_outbox_cursor SET xid = '0', id = 0, updated_at = clock_timestamp();"""


async def load_cursor(conn: Any, relay: str) -> tuple[Cursor, int]:
    """The cursor of ``relay`` (created at the start) and its count of published rows."""
    await conn.execute(_LOAD, relay)
    row = await conn.fetchrow(_READ_CURSOR, relay)
    return Cursor(row[0], row[1]), row[2]


async def save_cursor(conn: Any, relay: str, cursor: Cursor, published: int) -> None:
    """Move ``relay``'s cursor to ``cursor`` (inside the caller's fenced transaction)."""
    await conn.execute(_SAVE, relay, str(cursor.xid), cursor.id, published)


async def read_batch(conn: Any, cursor: Cursor, limit: int) -> list[Row]:
    """The next committed rows after ``cursor``, at most ``limit``, in ``(xid, id)`` order."""
    rows: list[Row] = await conn.fetch(_BATCH, str(cursor.xid), cursor.id, limit)
    return rows


def cursor_of(row: Row) -> Cursor:
    """The cursor just past ``row``."""
    return Cursor(int(row[XID]), row[ID])


async def next_xid(conn: Any) -> int:
    """The id the server's next transaction gets (``pg_snapshot_xmax``)."""
    value: int = await conn.fetchval(_NEXT_XID)
    return value


async def holdback(conn: Any, cursor: Cursor) -> Holdback | None:
    """What holds committed rows back from the relay, or ``None`` when nothing does."""
    held, _ = await look(conn, cursor)
    return held


async def look(conn: Any, cursor: Cursor) -> tuple[Holdback | None, int]:
    """What holds committed rows back (as ``holdback``), and how many rows past ``cursor`` are
    readable now: a read that found none may have been made just before their holder ended."""
    held, readable, *holder = await conn.fetchrow(_HOLDBACK, str(cursor.xid), cursor.id)
    if not held:
        return None, readable
    return Holdback(held, *holder), readable


async def cleanup(conn: Any, retention: timedelta, limit: int = 10_000) -> int:
    """Delete up to ``limit`` rows every relay has published, older than ``retention``."""
    done: str = await conn.execute(_CLEANUP, retention, limit)
    return int(done.split()[-1])


async def status(conn: Any, relay: str) -> OutboxStatus:
    """The counters of ``relay``: published, pending, lag, the oldest unpublished row."""
    row = await conn.fetchrow(_READ_CURSOR, relay)
    cursor = Cursor(0, 0) if row is None else Cursor(row[0], row[1])
    pending, oldest, lag = await conn.fetchrow(_STATUS, str(cursor.xid), cursor.id)
    total: int = await conn.fetchval("SELECT count(*) FROM hookbus_outbox")
    return OutboxStatus(
        relay,
        cursor,
        0 if row is None else row[2],
        pending,
        oldest,
        lag,
        total,
        None if row is None else row[3],
    )


# -- the unordered mode ----------------------------------------------------------------------

# The first unsent rows no other relay holds, in id order, locked until this transaction
# ends: no xmin gate (a row is visible once committed), so no other transaction holds them.
_CLAIM: Final = """\
SELECT id, xid::text, subject, event, msg_id, payload, headers::text
FROM hookbus_outbox
WHERE sent_at IS NULL
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED"""
_MARK: Final = "UPDATE hookbus_outbox SET sent_at = clock_timestamp() WHERE id = ANY($1::bigint[])"
_UNORDERED_STATUS: Final = """\
SELECT count(*) FILTER (WHERE sent_at IS NOT NULL),
       count(*) FILTER (WHERE sent_at IS NULL),
       min(created_at) FILTER (WHERE sent_at IS NULL),
       clock_timestamp() - min(created_at) FILTER (WHERE sent_at IS NULL),
       count(*),
       max(sent_at)
FROM hookbus_outbox"""


async def claim_batch(conn: Any, limit: int) -> list[Row]:
    """Lock and return up to ``limit`` unsent rows no other transaction holds, by id (inside
    the caller's transaction: they stay locked until it ends)."""
    rows: list[Row] = await conn.fetch(_CLAIM, limit)
    return rows


async def mark_sent(conn: Any, rows: list[Row]) -> None:
    """Mark ``rows`` sent (inside the transaction that claimed them)."""
    await conn.execute(_MARK, [row[ID] for row in rows])


async def unordered_status(conn: Any, relay: str) -> OutboxStatus:
    """The counters of an outbox relayed unordered: sent (kept), pending, the oldest unsent."""
    sent, pending, oldest, lag, total, last = await conn.fetchrow(_UNORDERED_STATUS)
    return OutboxStatus(relay, Cursor(0, 0), sent, pending, oldest, lag, total, last, "unordered")


async def reset_cursor(conn: Any) -> int:
    """Renumber the outbox for a restored database (see ``_RESET``); the rows to re-send."""
    count: int = await conn.fetchval("SELECT count(*) FROM hookbus_outbox")
    await conn.execute(_RESET)
    return count
