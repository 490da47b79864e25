"""The consumer: a durable JetStream pull consumer that applies each event once, in PostgreSQL.

Each fetched batch is decoded (declared events only), then applied in one transaction scope
of the consumer's own (``hookbus_asyncpg.transaction(pool)``): the message ids are recorded
in ``hookbus_inbox`` first, the hooks run for the ids that were not there yet, and the
messages are acknowledged only after COMMIT. A redelivery finds its id in the inbox and is
acknowledged without running hooks. A batch that fails is applied again one message at a
time, so one failing message never holds back the others: it alone is negatively acknowledged
with a delay (``backoff``), or dead-lettered at its last delivery (``max_deliver``). A message
that cannot become a declared event is dead-lettered at once, with its reason, and
terminated; the loop never stops for a message.

>>> consumer = Consumer(bus, pool, nc, name="projection", stream="ORDERS")  # doctest: +SKIP
>>> await consumer.start()                                                   # doctest: +SKIP
>>> await consumer.run()  # until consumer.stop()                            # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, final

import asyncpg
import hookbus_asyncpg

from hookbus import Bus, EntityEvent, LoadEvent, QueryEvent, RelationEvent

from ._connection import connection_of
from ._consumer_advisory import watch_max_deliveries
from ._consumer_decode import Decoded, EventDecoder, Undecodable
from ._consumer_failures import Failures
from ._consumer_state import ConsumerError, ConsumerState, ConsumerStatistics, Counters, Lifecycle
from ._consumer_top_up import FALLBACK_WAIT, TopUp
from ._dead_letters import (
    DEAD_LETTER_PREFIX,
    DEAD_LETTER_STREAM,
    ensure_dead_letter_stream,
)
from ._inbox import cleanup_inbox, inbox_exists, record_applied

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

__all__ = ["Consumer"]

logger: Final = logging.getLogger("hookbus.nats")

# Payload types of hookbus's own that carry the transaction they run in.
_CARRY_TX: Final = (EntityEvent, RelationEvent, LoadEvent, QueryEvent)

# Errors of the database or the network rather than of a message: worth a pause of the loop
# before the next fetch (the messages are retried after their delay either way).
_TRANSIENT: Final = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.TransactionRollbackError,  # serialization failure, deadlock
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


@final
class Consumer:
    """Apply the events of a JetStream stream to PostgreSQL through ``bus``'s hooks, once each.

    ``nc`` is the connection (a ``nats.aio.client.Client``): the consumer subscribes on it to
    the server's MAX_DELIVERIES advisory, and works with JetStream through ``js`` (by default
    ``nc.jetstream()``; pass your own for a domain, a prefix or a timeout). A
    ``JetStreamContext`` in place of ``nc`` still works for one release, with a
    ``DeprecationWarning`` (nats-py offers no public way to its connection).
    ``name`` is the durable consumer's name and the inbox's key: every process started with
    the same name shares the work (scale out by starting more). ``subject`` filters the
    stream (one key range per consumer for order per key). ``batch`` messages are fetched at a
    time, waiting up to ``fetch_timeout`` seconds when none is there. A delivery that is
    neither acknowledged nor in progress within ``ack_wait`` seconds is redelivered; while
    hooks run, the consumer says they are in progress every third of ``ack_wait``
    (``heartbeat=False`` turns that off). A message whose hooks fail is retried after
    ``backoff[n-1]`` seconds on its n-th failed delivery (the last delay repeats), and
    dead-lettered at delivery ``max_deliver``. ``max_ack_pending`` caps the messages in flight
    across every process (1: strict order). ``retention`` is how long inbox rows are kept; by
    default the stream's ``max_age`` (or its duplicate window, if longer), and a shorter one is
    refused. ``start()`` waits up to ``start_wait`` seconds for JetStream to answer for the
    stream (a cluster electing a leader). Events are decoded into the payload types ``bus``
    declares, and nothing else.
    """

    __slots__ = (
        "_ack_wait",
        "_advisory",
        "_batch",
        "_bus",
        "_counters",
        "_dead_prefix",
        "_dead_stream",
        "_decoder",
        "_failures",
        "_fetch_timeout",
        "_heartbeat",
        "_js",
        "_life",
        "_max_ack_pending",
        "_max_deliver",
        "_nc",
        "_pool",
        "_retention",
        "_start_wait",
        "_stop",
        "_stream",
        "_sub",
        "_subject",
        "_top_up_inbox",
        "cleanup_every",
        "name",
    )

    def __init__(
        self,
        bus: Bus,
        pool: asyncpg.Pool,
        nc: Client | JetStreamContext | None = None,
        *,
        js: Any = None,
        name: str,
        stream: str,
        subject: str | None = None,
        batch: int = 500,
        fetch_timeout: float = 2.0,
        ack_wait: float = 30.0,
        max_deliver: int = 10,
        backoff: Sequence[float] = (1.0, 5.0, 30.0, 120.0),
        max_ack_pending: int | None = None,
        heartbeat: bool = True,
        retention: timedelta | None = None,
        cleanup_every: float = 3600.0,
        dead_letter_stream: str = DEAD_LETTER_STREAM,
        dead_letter_prefix: str = DEAD_LETTER_PREFIX,
        start_wait: float = 60.0,
    ) -> None:
        if not name or any(c in name for c in ". *>\t\n"):
            raise ValueError(f"a consumer name is a NATS token (no '.', '*', '>', space): {name!r}")
        if batch < 1 or max_deliver < 1 or ack_wait <= 0 or fetch_timeout <= 0:
            raise ValueError("batch, max_deliver, ack_wait and fetch_timeout must be positive")
        if not backoff or any(delay < 0 for delay in backoff):
            raise ValueError(f"backoff is one or more delays >= 0, not {backoff!r}")
        nc, js = connection_of(nc, js, worker="Consumer", leading="bus, pool", position="third")
        self.name: Final = name
        self._bus = bus
        self._pool = pool
        self._nc = nc
        self._js = js
        self._stream = stream
        self._subject = subject
        self._batch = batch
        self._fetch_timeout = fetch_timeout
        self._ack_wait = ack_wait
        self._max_deliver = max_deliver
        self._max_ack_pending = max_ack_pending
        self._heartbeat = heartbeat
        self._retention = retention
        self.cleanup_every = cleanup_every
        self._dead_stream = dead_letter_stream
        self._dead_prefix = dead_letter_prefix
        self._start_wait = start_wait
        self._decoder = EventDecoder(bus)
        self._counters = Counters()
        self._failures = Failures(
            name,
            stream,
            js,
            pool,
            self._decoder,
            self._counters,
            backoff=tuple(float(d) for d in backoff),
            max_deliver=max_deliver,
            prefix=dead_letter_prefix,
        )
        self._life = Lifecycle(name)
        self._stop = asyncio.Event()
        self._sub: Any = None
        self._advisory: Any = None
        self._top_up_inbox: TopUp | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def state(self) -> ConsumerState:
        """Where the consumer is in its life."""
        return self._life.state

    @property
    def retention(self) -> timedelta | None:
        """How long inbox rows are kept (known once started; ``None``: forever)."""
        return self._retention

    def statistics(self) -> ConsumerStatistics:
        """A snapshot of the counters (applied, duplicates, redelivered, dead-lettered...)."""
        return self._counters.snapshot()

    async def start(self) -> None:
        """Create the durable consumer (or bind to it) and the dead-letter stream.

        While JetStream does not answer for the stream (no leader elected yet after a
        server died), asks again with backoff for ``start_wait`` seconds, then raises
        :class:`JetStreamNotReadyError`. Raises :class:`ConsumerError` if ``retention`` is
        shorter than the stream keeps messages: a redelivery after its inbox row is gone would
        be applied twice, and if ``hookbus_inbox`` is missing (``inbox_plugin()`` not
        installed): every message would fail.
        """
        self._life.require(ConsumerState.NEW, doing="start()")
        from ._startup import when_ready

        try:
            if not await inbox_exists(self._pool):
                raise ConsumerError(
                    f"consumer {self.name!r}: the table hookbus_inbox is missing: add "
                    "hookbus_nats.inbox_plugin() to the application's PluginSet and run "
                    "`hookbus install` (or hookbus_nats.create_inbox(pool))"
                )
            checked = await when_ready(
                self._check, self._stream, wait=self._start_wait, logger=logger, stop=self._stop
            )
            if checked is None:  # stop() during the wait: nothing was bound
                self._life.move(ConsumerState.STOPPED)
                return
            await self._subscribe()
        except BaseException:
            self._life.move(ConsumerState.FAILED)
            raise
        self._life.move(ConsumerState.STARTED)

    async def _check(self) -> bool:
        """The start-up questions to JetStream, asked again while it does not answer: the
        stream (and the retention it implies), the dead-letter stream, the durable consumer
        (created if missing). Nothing is bound here, so a retry leaves nothing behind."""
        from nats.js import api
        from nats.js.errors import NotFoundError

        info = await self._js.stream_info(self._stream)
        self._retention = _retention(self.name, info.config, self._retention)
        await ensure_dead_letter_stream(self._js, self._dead_stream, self._dead_prefix)
        try:
            await self._js.consumer_info(self._stream, self.name)
        except NotFoundError:
            config = api.ConsumerConfig(
                durable_name=self.name,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=self._ack_wait,
                max_deliver=self._max_deliver,
                max_ack_pending=self._max_ack_pending,
                filter_subject=self._subject,
            )
            await self._js.add_consumer(self._stream, config=config)
        return True

    async def _subscribe(self) -> None:
        """Bind the pull subscription, the advisory's and the top-up's inbox, once, after the
        checks; if a later one fails, the earlier ones are unsubscribed (nothing half-bound)."""
        sub = await self._js.pull_subscribe_bind(durable=self.name, stream=self._stream)
        try:
            self._advisory = await watch_max_deliveries(
                self._nc, self._stream, self.name, self._failures.undelivered
            )
            self._top_up_inbox = await TopUp.bind(self._nc, sub)
        except BaseException:
            for bound in (sub, self._advisory):
                if bound is not None:
                    with contextlib.suppress(Exception):
                        await bound.unsubscribe()
            self._advisory = None
            raise
        self._sub = sub

    def stop(self) -> None:
        """Ask ``run()`` to return after the batch in hand (a signal handler may call it).

        During ``start()``'s wait for JetStream, the wait ends at once: ``start()`` returns
        with nothing bound and the consumer ``STOPPED`` (``run()`` then returns too)."""
        self._stop.set()

    async def run(self) -> None:
        """Fetch and apply batches until :meth:`stop`; starts the consumer if it is new.

        The next batch is fetched while the current one is applied. On stop, what was fetched
        is applied and what committed is acknowledged. Errors of the database or of NATS pause
        the loop (doubling up to 30 s, nothing fetched meanwhile), never end it.
        """
        if self._life.state is ConsumerState.NEW:
            await self.start()
            if self.state is ConsumerState.STOPPED:  # stopped while it started
                return
        self._life.move(ConsumerState.RUNNING)
        pause = 0.0
        loop = asyncio.get_running_loop()
        next_cleanup = loop.time()
        fetching: asyncio.Task[list[Any]] | None = None
        try:
            while True:
                if self._retention is not None and loop.time() >= next_cleanup:
                    next_cleanup = loop.time() + self.cleanup_every
                    await self._cleanup_logged()
                healthy = True
                try:
                    waited = fetching is not None and fetching.done()
                    msgs = await (fetching or self._fetch())
                    if waited and self._room(len(msgs)):  # fetched while the last applied
                        msgs += await self._top_up(len(msgs))
                except Exception as exc:  # NATS away: pause, never end the loop
                    logger.warning("consumer %s: fetch failed: %r; pausing", self.name, exc)
                    msgs, healthy = [], False
                fetching = None
                stopping = self._stop.is_set()
                if healthy and not stopping:  # the next batch comes while this one is applied
                    fetching = asyncio.create_task(self._fetch())
                try:
                    healthy = await self._handle(msgs) and healthy
                except Exception as exc:  # PostgreSQL away: pause, never end the loop
                    logger.warning("consumer %s: %r; pausing", self.name, exc)
                    healthy = False
                if stopping:
                    break
                pause = 0.0 if healthy else min(30.0, max(0.5, pause * 2))
                if pause:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), pause)
            self._life.move(ConsumerState.STOPPING)
        except BaseException:
            self._life.move(ConsumerState.FAILED)
            raise
        finally:
            if fetching is not None:  # what it gets is redelivered after ack_wait
                fetching.cancel()
                with contextlib.suppress(BaseException):
                    await fetching
            # the caller's connection as it was
            for sub in (self._sub, self._advisory, self._top_up_inbox):
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
        self._life.move(ConsumerState.STOPPED)

    async def poll(self) -> int:
        """Fetch one batch (waiting up to ``fetch_timeout``) and apply it; return its size."""
        self._life.require(ConsumerState.STARTED, ConsumerState.RUNNING, doing="poll()")
        before = self._counters.snapshot()
        await self._handle(await self._fetch())
        after = self._counters.snapshot()
        return sum(
            getattr(after, f) - getattr(before, f)
            for f in ("applied", "duplicates", "retried", "dead_lettered")
        )

    async def cleanup_inbox(self) -> int:
        """Delete this consumer's inbox rows older than its retention; return how many."""
        self._life.require(ConsumerState.STARTED, ConsumerState.RUNNING, doing="cleanup_inbox()")
        if self._retention is None:
            return 0
        return await cleanup_inbox(self._pool, self.name, self._retention)

    async def _cleanup_logged(self) -> None:
        try:
            deleted = await self.cleanup_inbox()
        except _TRANSIENT as exc:
            logger.warning("consumer %s: inbox cleanup failed: %r", self.name, exc)
            return
        if deleted:
            logger.info("consumer %s: %d inbox rows past retention deleted", self.name, deleted)

    # -- one batch ------------------------------------------------------------------------

    def _room(self, fetched: int) -> bool:
        """Whether a top-up of ``fetched`` messages may get more: some, fewer than a batch
        and than ``max_ack_pending`` (the server sends no more while those are unacked)."""
        limit = min(self._batch, self._max_ack_pending or self._batch)
        return 0 < fetched < limit

    async def _top_up(self, fetched: int) -> list[Any]:
        """What else the server holds now, in one round trip (``_consumer_top_up``); nothing
        if NATS fails (the next fetch meets the failure), so the batch in hand is applied all
        the same."""
        try:
            if self._top_up_inbox is not None:
                return await self._top_up_inbox.take(self._batch - fetched)
            return await self._fetch(self._batch - fetched, wait=FALLBACK_WAIT)
        except Exception as exc:
            logger.debug("consumer %s: top-up fetch failed: %r", self.name, exc)
            return []

    async def _fetch(self, batch: int | None = None, *, wait: float | None = None) -> list[Any]:
        """Up to ``batch`` messages, waiting up to ``wait`` (``fetch_timeout``) for the first."""
        from nats.errors import TimeoutError as NatsTimeoutError

        try:
            msgs: list[Any] = await self._sub.fetch(
                batch or self._batch, timeout=wait or self._fetch_timeout
            )
        except (TimeoutError, NatsTimeoutError):  # nats' own, or a bare asyncio one
            return []  # nothing arrived: fetch itself waited, no busy loop
        return msgs

    async def _handle(self, msgs: list[Any]) -> bool:
        """Apply one fetch; False when nothing in it could be applied (pause the loop)."""
        counters = self._counters
        decoded: list[tuple[Any, Decoded]] = []
        for msg in msgs:
            if msg.metadata.num_delivered > 1:
                counters.redelivered += 1
            try:
                decoded.append((msg, self._decoder.decode(msg.headers, msg.data)))
            except Undecodable as bad:
                await self._failures.dead_letter(msg, bad.reason, bad.detail)
        if not decoded:
            return True
        try:
            await self._guarded(decoded, self._apply(decoded))
        except Exception as exc:
            if len(decoded) == 1:
                await self._failures.failed(decoded[0], exc)
                return not isinstance(exc, _TRANSIENT)
            logger.info(
                "consumer %s: a batch of %d failed (%r); applying one at a time",
                self.name,
                len(decoded),
                exc,
            )
            counters.fallbacks += 1
            healthy = False
            for index, item in enumerate(decoded):
                try:
                    await self._guarded([item], self._apply([item]))
                except Exception as one:
                    await self._failures.failed(item, one)
                    if isinstance(one, _TRANSIENT):  # the database is away: the rest waits too
                        for rest in decoded[index + 1 :]:
                            await self._failures.failed(rest, one)
                        return False
                else:
                    healthy = True
            return healthy
        counters.batches += 1
        return True

    async def _apply(self, items: list[tuple[Any, Decoded]]) -> None:
        """One transaction: the inbox rows, the hooks of the new ones; acks after COMMIT."""
        emit = self._bus.emit
        applied = 0
        async with hookbus_asyncpg.transaction(self._pool) as tx:
            fresh = await record_applied(tx.connection, self.name, [d.msg_id for _, d in items])
            for _, event in items:
                if event.msg_id in fresh:
                    fresh.discard(event.msg_id)  # an id twice in one fetch applies once
                    payload = event.payload
                    if isinstance(payload, _CARRY_TX) and payload.tx is None:
                        payload.tx = tx
                    await emit(event.event, payload)
                    applied += 1
        # COMMIT succeeded: only now may the server forget these messages. A lost ack is a
        # redelivery, which the inbox turns into a no-op.
        try:
            for msg, _ in items:
                await msg.ack()
        except Exception as exc:
            logger.warning("consumer %s: acknowledgements lost (%r)", self.name, exc)
        self._counters.applied += applied
        self._counters.duplicates += len(items) - applied

    async def _guarded(self, items: list[tuple[Any, Decoded]], work: Awaitable[None]) -> None:
        """Run ``work``, telling the server the messages are in progress while it runs."""
        if not self._heartbeat:
            await work
            return
        beat = asyncio.create_task(self._beat([msg for msg, _ in items]))  # noqa: RUF006 (awaited below)
        try:
            await work
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _beat(self, msgs: list[Any]) -> None:
        while True:
            await asyncio.sleep(self._ack_wait / 3)
            for msg in msgs:
                await msg.in_progress()


def _retention(name: str, config: Any, asked: timedelta | None) -> timedelta | None:
    """The inbox retention: at least the stream's max_age and duplicate window."""
    kept = max(config.max_age or 0.0, config.duplicate_window or 0.0)
    if not config.max_age:  # the stream keeps messages forever: so does the inbox
        if asked is not None:
            raise ConsumerError(
                f"consumer {name!r}: retention {asked} is shorter than the stream keeps "
                "messages (forever, max_age 0): a redelivery could be applied twice"
            )
        return None
    needed = timedelta(seconds=kept)
    if asked is None:
        return needed
    if asked < needed:
        raise ConsumerError(
            f"consumer {name!r}: retention {asked} is shorter than the stream keeps messages "
            f"({needed}): a redelivery after its inbox row is gone would be applied twice"
        )
    return asked
