"""``UnorderedRelay``: committed outbox rows to NATS JetStream with several relays side by
side, in no order, for throughput.

>>> relay = UnorderedRelay(dsn, nc, stream="SHOP")  # doctest: +SKIP
>>> await relay.run()  # until relay.stop(); raises what stopped it otherwise  # doctest: +SKIP

Each batch is one transaction: the first ``batch_size`` unsent rows no other relay holds are
claimed (``SELECT ... ORDER BY id FOR UPDATE SKIP LOCKED``), published with every
acknowledgement in flight, marked ``sent_at`` in the same transaction, and committed. No
relay waits for another (each skips the rows the others hold) nor for the xmin of other
transactions (a row is claimable once committed). A relay that dies before its COMMIT
leaves its rows unlocked and unsent: another relay sends them again under the same
``Nats-Msg-Id``, which JetStream drops while within its duplicate window. Nothing is
ordered, not even per key. The ordered ``Relay`` and this one never run on one outbox
(``RelayModeError``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Final, final

import asyncpg
import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext

from ._connection import connection_of
from ._relay_mode import claim_mode, hold_unordered
from ._relay_publish import Publishing, Stopped, check_options
from ._relay_sql import claim_batch, cleanup, mark_sent
from ._relay_state import RelayState, check_move
from ._relay_wakeup import Wakeup

__all__ = ["UnorderedRelay", "UnorderedRelayStats"]

logger: Final = logging.getLogger("hookbus.outbox")


@final
class UnorderedRelayStats(msgspec.Struct, frozen=True):
    """A snapshot of an unordered relay's counters (``relay.stats()``); the outbox's pending
    rows and its oldest unsent one are in ``hookbus outbox status``."""

    state: RelayState
    published: int  # messages acknowledged by JetStream since the start
    duplicates: int  # of which JetStream had already stored (a re-send)
    batches: int  # batches committed (marked sent)
    retries: int  # batches sent again after NATS failed to acknowledge them
    listening: bool  # whether a LISTEN connection is up (else polling only)
    error: str | None  # the last error seen (a NATS failure, or what stopped the relay)


def _always() -> None:
    """No lock to check: an unordered relay's rows are locked by its own transaction."""


@final
class UnorderedRelay(Publishing):
    """Publishes the rows of ``hookbus_outbox`` on the database ``dsn`` through ``nc``, side
    by side with other unordered relays, in no order.

    The arguments are the ordered ``Relay``'s: ``nc`` the NATS connection (a
    ``nats.aio.client.Client``; a ``JetStreamContext`` in its place still works for one
    release, with a ``DeprecationWarning``), ``js`` a JetStream context of your own (by
    default ``nc.jetstream()``); ``stream``'s duplicate window must be at least
    ``retry_horizon`` seconds (else ``DuplicateWindowError`` at the start); ``name`` names
    the relay in logs; ``poll_interval`` bounds the wait when no NOTIFY comes;
    ``ack_timeout`` the wait for a batch's acknowledgements; failed batches are sent again
    after a backoff growing to ``max_backoff`` (the batch's rows stay locked meanwhile).
    Rows marked sent are deleted once older than ``retention`` (``None``: never), while
    idle, every ``cleanup_interval``. ``start_wait``: how long to wait at the start for
    JetStream to answer for the stream.
    """

    __slots__ = (
        "_batches",
        "_cleaned",
        "_dsn",
        "_state",
        "_wakeup",
        "batch_size",
        "cleanup_interval",
        "poll_interval",
        "retention",
    )

    def __init__(
        self,
        dsn: str,
        nc: Client | JetStreamContext | None = None,
        *,
        js: JetStreamContext | None = None,
        stream: str,
        name: str = "unordered",
        batch_size: int = 1000,
        poll_interval: float = 1.0,
        ack_timeout: float = 10.0,
        max_backoff: float = 5.0,
        retry_horizon: float = 60.0,
        retention: timedelta | None = timedelta(hours=1),
        cleanup_interval: float = 60.0,
        start_wait: float = 60.0,
    ) -> None:
        check_options(
            batch_size,
            poll_interval=poll_interval,
            ack_timeout=ack_timeout,
            max_backoff=max_backoff,
            retry_horizon=retry_horizon,
            start_wait=start_wait,
        )
        self._dsn = dsn
        self._nc, self._js = connection_of(
            nc, js, worker="UnorderedRelay", leading="dsn", position="second"
        )
        self.stream = stream
        self.name = name
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.ack_timeout = ack_timeout
        self.max_backoff = max_backoff
        self.retry_horizon = retry_horizon
        self.retention = retention
        self.cleanup_interval = cleanup_interval
        self.start_wait = start_wait
        self._state = RelayState.NEW
        self._stop = asyncio.Event()
        self._wakeup: Wakeup | None = None
        self._published = self._duplicates = self._batches = self._retries = 0
        self._cleaned = 0.0
        self._error: str | None = None

    @property
    def state(self) -> RelayState:
        """Where the relay is in its lifecycle."""
        return self._state

    def _move(self, new: RelayState) -> None:
        check_move(self._state, new)
        self._state = new

    def stop(self) -> None:
        """Ask the relay to stop: it finishes the batch in flight (publish, acknowledgements,
        COMMIT), then ``run`` returns. A batch waiting to be sent again is rolled back: its
        rows are unlocked for the other relays (re-sent under the same ids)."""
        self._stop.set()
        if self._wakeup is not None:
            self._wakeup.nudge()

    def stats(self) -> UnorderedRelayStats:
        """A snapshot of the counters."""
        wakeup = self._wakeup
        return UnorderedRelayStats(
            self._state,
            self._published,
            self._duplicates,
            self._batches,
            self._retries,
            wakeup is not None and wakeup.listening,
            self._error,
        )

    async def run(self) -> None:
        """Relay until ``stop()``; raise what made it stop otherwise (a duplicate window too
        short, an outbox relayed in order, a database error)."""
        self._move(RelayState.STARTING)
        try:
            await self._check_stream()
            async with (
                asyncpg.create_pool(self._dsn, min_size=2, max_size=3) as pool,
                pool.acquire() as holder,  # for the run: `hookbus outbox mode` sees it
            ):
                await hold_unordered(holder)
                async with pool.acquire() as conn:
                    await claim_mode(conn, "unordered")
                wakeup = self._wakeup = Wakeup(lambda: asyncpg.connect(self._dsn))
                try:
                    await self._loop(pool, wakeup)
                finally:
                    await wakeup.close()
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

    async def _loop(self, pool: asyncpg.Pool, wakeup: Wakeup) -> None:
        while not self._stop.is_set():
            sent = await self._batch(pool)
            if sent == self.batch_size:
                continue  # a full batch: more may wait
            # a part batch or none: the rest (if any) is held by other relays or not
            # committed yet; a NOTIFY heard meanwhile ends the wait at once
            self._move(RelayState.WAITING)
            if not sent:
                await self._clean_if_due(pool)
            await wakeup.wait(self.poll_interval)

    async def _batch(self, pool: asyncpg.Pool) -> int:
        """Claim, publish, mark sent and commit one batch; its size (0: nothing to claim)."""
        async with pool.acquire() as conn, conn.transaction():
            rows = await claim_batch(conn, self.batch_size)
            if not rows:
                return 0
            self._move(RelayState.RELAYING)
            await self._publish_rows(rows, _always)
            await mark_sent(conn, rows)
            # No wait for the WAL flush: a COMMIT lost with a server crash only makes another
            # relay send those rows again, and JetStream drops them as duplicates.
            await conn.execute("SET LOCAL synchronous_commit = off")
        self._batches += 1
        return len(rows)

    async def _clean_if_due(self, pool: asyncpg.Pool) -> None:
        if self.retention is None or time.monotonic() - self._cleaned < self.cleanup_interval:
            return
        self._cleaned = time.monotonic()
        async with pool.acquire() as conn:
            deleted = await cleanup(conn, self.retention)
        if deleted:
            logger.info("relay %r deleted %d published row(s)", self.name, deleted)
