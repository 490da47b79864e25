"""``Relay``: committed outbox rows to NATS JetStream, in commit order, each batch acknowledged
before the cursor moves.

>>> nc = await nats.connect(url)  # doctest: +SKIP
>>> relay = Relay(dsn, nc, stream="SHOP")  # doctest: +SKIP
>>> await relay.run()  # until relay.stop(); raises what stopped it otherwise  # doctest: +SKIP

One relay per outbox is active: it holds the fenced lock ``hookbus.outbox.<name>`` and every
save of its cursor is fenced, so a relay that lost its lock cannot move the cursor, and it
stops before its next publish; another relay started with the same name waits as a standby
and takes over. A batch is the next ``batch_size`` committed rows after the ``(xid, id)``
cursor, below the gate (its database's oldest open transaction); all of it is published with
every acknowledgement in flight (answered on one inbox for the batch), and the cursor moves, in
a transaction that also checks the lock's token, only once every message of the batch is
acknowledged. Each
message carries the row's ``msg_id`` as ``Nats-Msg-Id``: a batch re-sent (after a NATS
failure, or by a relay restarted before it saved its cursor) is dropped by JetStream as a
duplicate while within the stream's duplicate window, which must cover ``retry_horizon``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Any, Final, final

import asyncpg
import msgspec
from hookbus_asyncpg import FencedLock, LockLostError, LockTimeoutError
from nats.aio.client import Client
from nats.js import JetStreamContext

from ._connection import connection_of
from ._relay_errors import CursorAheadError
from ._relay_mode import claim_mode
from ._relay_publish import Publishing, Stopped, check_options
from ._relay_sql import (
    Cursor,
    Holdback,
    Row,
    cleanup,
    cursor_of,
    load_cursor,
    look,
    next_xid,
    read_batch,
    save_cursor,
)
from ._relay_state import RelayState, check_move
from ._relay_wakeup import Wakeup

__all__ = ["Relay", "RelayStats"]

logger: Final = logging.getLogger("hookbus.outbox")
# How often the relay looks at what holds it back (at most), and polls while rows are held:
# first after _HELD_FIRST, doubling to _HELD_POLL (a holder that commits without a NOTIFY,
# such as a consumer's transaction or the relay's own cursor save, mostly ends in a few ms).
_LOOK_EVERY: Final = 1.0
_HELD_FIRST: Final = 0.005
_HELD_POLL: Final = 0.05
_WARN_EVERY: Final = 30.0


@final
class RelayStats(msgspec.Struct, frozen=True):
    """A snapshot of a relay's counters (``relay.stats()``)."""

    state: RelayState
    cursor: Cursor | None
    published: int  # messages acknowledged by JetStream since the start
    duplicates: int  # of which JetStream had already stored (a re-send)
    batches: int
    retries: int  # batches sent again after NATS failed to acknowledge them
    held_back: Holdback | None  # what holds committed rows back, at the last look
    listening: bool  # whether a LISTEN connection is up (else polling only)
    error: str | None  # the last error seen (a NATS failure, or what stopped the relay)


@final
class Relay(Publishing):
    """Publishes the rows of ``hookbus_outbox`` on the database ``dsn`` through ``nc``.

    ``nc`` is the NATS connection (a ``nats.aio.client.Client``): the relay publishes on it
    and asks JetStream about the stream through ``js`` (by default ``nc.jetstream()``; pass
    your own for a domain, a prefix or a timeout). A ``JetStreamContext`` in place of ``nc``
    still works for one release, with a ``DeprecationWarning``.
    ``stream`` is the stream the outbox's subjects go to: its duplicate window must be at
    least ``retry_horizon`` seconds (else ``DuplicateWindowError`` at the start). ``name``
    names the cursor and the lock (one active relay per name). ``poll_interval`` bounds the
    wait when no NOTIFY comes; ``ack_timeout`` the wait for a batch's acknowledgements;
    failed batches are sent again after a backoff growing to ``max_backoff``. Rows every
    relay has published are deleted once older than ``retention`` (``None``: never).
    ``standby_check`` is how often a standby tries the lock. At the start, while JetStream
    does not answer for the stream (a cluster electing a leader), the relay asks again with
    backoff for ``start_wait`` seconds, then raises ``JetStreamNotReadyError``.
    """

    __slots__ = (
        "_batches",
        "_cleaned",
        "_cursor",
        "_dsn",
        "_held",
        "_state",
        "_wakeup",
        "_warned",
        "batch_size",
        "cleanup_interval",
        "poll_interval",
        "retention",
        "stall_warning",
        "standby_check",
    )

    def __init__(
        self,
        dsn: str,
        nc: Client | JetStreamContext | None = None,
        *,
        js: JetStreamContext | None = None,
        stream: str,
        name: str = "default",
        batch_size: int = 1000,
        poll_interval: float = 1.0,
        ack_timeout: float = 10.0,
        max_backoff: float = 5.0,
        retry_horizon: float = 60.0,
        retention: timedelta | None = timedelta(hours=1),
        cleanup_interval: float = 60.0,
        standby_check: float = 5.0,
        stall_warning: float = 5.0,
        start_wait: float = 60.0,
    ) -> None:
        check_options(
            batch_size,
            poll_interval=poll_interval,
            ack_timeout=ack_timeout,
            max_backoff=max_backoff,
            retry_horizon=retry_horizon,
            standby_check=standby_check,
            start_wait=start_wait,
        )
        self._dsn: Final = dsn
        self._nc, self._js = connection_of(nc, js, worker="Relay", leading="dsn", position="second")
        self.stream = stream
        self.name: Final = name
        self.batch_size: Final = batch_size
        self.poll_interval: Final = poll_interval
        self.ack_timeout = ack_timeout
        self.max_backoff = max_backoff
        self.retry_horizon = retry_horizon
        self.retention: Final = retention
        self.cleanup_interval: Final = cleanup_interval
        self.standby_check: Final = standby_check
        self.stall_warning: Final = stall_warning
        self.start_wait = start_wait
        self._state = RelayState.NEW
        self._stop = asyncio.Event()
        self._wakeup: Wakeup | None = None
        self._cursor: Cursor | None = None
        self._published = self._duplicates = self._batches = self._retries = 0
        self._held: Holdback | None = None
        self._cleaned = 0.0
        self._warned: tuple[object, float] = (None, 0.0)
        self._error: str | None = None

    # -- the lifecycle ---------------------------------------------------------------------

    @property
    def state(self) -> RelayState:
        """Where the relay is in its lifecycle."""
        return self._state

    @property
    def lock_name(self) -> str:
        """The fenced lock the active relay holds."""
        return f"hookbus.outbox.{self.name}"

    def _move(self, new: RelayState) -> None:
        check_move(self._state, new)
        self._state = new

    def stop(self) -> None:
        """Ask the relay to stop: it finishes the batch in flight (publish, acknowledgements,
        cursor), then ``run`` returns. A batch waiting to be sent again is left for the next
        relay (its messages are re-sent under the same ids)."""
        self._stop.set()
        if self._wakeup is not None:
            self._wakeup.nudge()

    def stats(self) -> RelayStats:
        """A snapshot of the counters."""
        wakeup = self._wakeup
        return RelayStats(
            self._state,
            self._cursor,
            self._published,
            self._duplicates,
            self._batches,
            self._retries,
            self._held,
            wakeup is not None and wakeup.listening,
            self._error,
        )

    async def run(self) -> None:
        """Relay until ``stop()``; raise what made it stop otherwise (a lost lock, a cursor
        ahead of the server, a duplicate window too short, a database error)."""
        self._move(RelayState.STARTING)
        try:
            await self._check_stream()
            async with asyncpg.create_pool(self._dsn, min_size=1, max_size=4) as pool:
                lock = await self._take_lock(pool)
                if lock is not None:
                    try:
                        await self._relay_while_held(pool, lock)
                    finally:
                        await lock.__aexit__(None, None, None)
        except Stopped:
            pass
        except asyncio.CancelledError:
            self._move(RelayState.STOPPED)
            raise
        except BaseException as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            self._move(RelayState.FAILED)
            raise
        self._move(RelayState.STOPPED)

    # -- starting --------------------------------------------------------------------------

    async def _take_lock(self, pool: asyncpg.Pool) -> FencedLock | None:
        """The relay's lock, waiting as a standby while another relay holds it; ``None`` if
        asked to stop meanwhile."""
        while not self._stop.is_set():
            lock = FencedLock(pool, self.lock_name, wait=self.standby_check)
            try:
                await lock.__aenter__()
            except LockTimeoutError as exc:
                logger.info("relay %r is on standby: %s", self.name, exc)
                continue
            return lock
        return None

    async def _relay_while_held(self, pool: asyncpg.Pool, lock: FencedLock) -> None:
        async with pool.acquire() as conn:
            await claim_mode(conn, "ordered")
            cursor, _ = await load_cursor(conn, self.name)
            upcoming = await next_xid(conn)
        if cursor.xid >= upcoming:
            raise CursorAheadError(
                f"the cursor of relay {self.name!r} is at transaction {cursor.xid}, ahead "
                f"of the server's next transaction {upcoming}: the database was restored (or "
                "the cursor copied). Rows written from now on would never be published. "
                "`hookbus outbox reset` re-sends every row the outbox holds and lets the "
                "relay run (consumers drop what they have seen by message id)"
            )
        self._cursor = cursor
        wakeup = self._wakeup = Wakeup(lambda: asyncpg.connect(self._dsn))
        try:
            await self._loop(pool, lock, wakeup, cursor)
        finally:
            await wakeup.close()

    # -- relaying --------------------------------------------------------------------------

    async def _loop(
        self, pool: asyncpg.Pool, lock: FencedLock, wakeup: Wakeup, cursor: Cursor
    ) -> None:
        """Batch after batch, pipelined: while a batch's acknowledgements are in flight the
        next batch is read, and while a batch is published the previous one's cursor is
        saved. A batch is published only once the previous one is wholly acknowledged, so
        the stream holds the rows in cursor order."""
        looked = 0.0
        held_poll = _HELD_FIRST
        saving: asyncio.Task[None] | None = None
        reading: asyncio.Task[list[Row]] | None = None
        try:
            rows = await self._read(pool, cursor)
            while not self._stop.is_set():
                if not rows and wakeup.heard():
                    # a NOTIFY came while the last batch went out (the read made meanwhile
                    # predates it): read again at once, the cursor's save going on meanwhile
                    rows = await self._read(pool, cursor)
                # nothing to send (woken by a NOTIFY or the poll): what holds rows back?
                # a part batch: the same, at most every _LOOK_EVERY
                readable = 0
                if not rows or (
                    len(rows) < self.batch_size and time.monotonic() - looked >= _LOOK_EVERY
                ):
                    looked = time.monotonic()
                    readable = await self._look(pool, cursor, idle=not rows)
                if not rows and readable:
                    # their holder ended between the read and the look, and their NOTIFY
                    # came before the read: read them now, not at the next poll
                    rows = await self._read(pool, cursor)
                    continue
                if not rows:
                    if saving is not None:
                        await saving  # the cursor is durable before the relay idles
                        saving = None
                    self._move(RelayState.WAITING)
                    # rows held back behind xmin were committed: their NOTIFY has come and
                    # gone, so look again soon (and then less often) rather than at the poll
                    pause = self.poll_interval
                    if self._held is None:
                        held_poll = _HELD_FIRST
                    else:
                        pause = min(pause, held_poll)
                        held_poll = min(2 * held_poll, _HELD_POLL)
                    await wakeup.wait(pause)
                    rows = await self._read(pool, cursor)
                    continue
                self._move(RelayState.RELAYING)
                last = cursor_of(rows[-1])
                reading = asyncio.create_task(self._read(pool, last))
                await self._publish(rows, lock)
                if saving is not None:
                    await saving
                saving = asyncio.create_task(self._save(pool, lock, last, len(rows)))
                rows, reading = await reading, None
                cursor = last
        except BaseException:
            for task in (saving, reading):
                if task is not None:
                    task.cancel()  # an unsaved cursor only means a re-send, dropped as duplicate
            raise
        if saving is not None:
            await saving  # asked to stop: the last batch's cursor is saved

    async def _read(self, pool: asyncpg.Pool, cursor: Cursor) -> list[Row]:
        async with pool.acquire() as conn:
            return await read_batch(conn, cursor, self.batch_size)

    async def _save(self, pool: asyncpg.Pool, lock: FencedLock, cursor: Cursor, n: int) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await lock.fence(conn)
            await save_cursor(conn, self.name, cursor, n)
            # No wait for the WAL flush: a save lost with a server crash only makes the next
            # relay send those rows again, and JetStream drops them as duplicates.
            await conn.execute("SET LOCAL synchronous_commit = off")
        self._cursor = cursor
        self._batches += 1

    async def _look(self, pool: asyncpg.Pool, cursor: Cursor, *, idle: bool) -> int:
        """What holds the relay back; when idle, the clean-up that is due. Returns how many
        rows past ``cursor`` are readable now."""
        async with pool.acquire() as conn:
            held, readable = await look(conn, cursor)
            self._watch(held)
            now = time.monotonic()
            if idle and self.retention is not None and now - self._cleaned >= self.cleanup_interval:
                self._cleaned = now
                await self._clean(conn)
        return readable

    def _watch(self, held: Holdback | None) -> None:
        was, self._held = self._held, held
        if held is None:
            if was is not None:
                logger.info("relay %r is no longer held back", self.name)
            return
        if held.age is None or held.age.total_seconds() < self.stall_warning:
            return
        # once per holder, then again every _WARN_EVERY while it lasts
        now = time.monotonic()
        who = (held.pid, held.gid)
        if who != self._warned[0] or now - self._warned[1] >= _WARN_EVERY:
            self._warned = (who, now)
            logger.warning("relay %r is held back: %s", self.name, held.describe())

    async def _clean(self, conn: Any) -> None:
        assert self.retention is not None
        deleted = await cleanup(conn, self.retention)
        if deleted:
            logger.info("relay %r deleted %d published row(s)", self.name, deleted)

    async def _publish(self, rows: list[Row], lock: FencedLock) -> None:
        """Send ``rows`` until every one is acknowledged, backing off while NATS fails."""

        def check() -> None:
            if lock.lost:
                raise LockLostError(
                    f"relay {self.name!r} lost its lock {self.lock_name!r}; it stops before "
                    "publishing again (a standby takes over)"
                )

        await self._publish_rows(rows, check)
