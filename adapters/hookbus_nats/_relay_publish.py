"""What both relays (ordered ``Relay``, ``UnorderedRelay``) share: the stream's check at the
start, and a batch published with every acknowledgement in flight, sent again after a
backoff while NATS fails.

A message carries the row's ``msg_id`` as ``Nats-Msg-Id``, so a batch sent again is dropped
by JetStream as a duplicate while within the stream's duplicate window; the relays refuse a
stream whose window is shorter than their ``retry_horizon``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import msgspec
import nats.errors
from hookbus_asyncpg import WIRE_VERSION
from nats.js import JetStreamContext

from ._relay_errors import DuplicateWindowError
from ._relay_sql import Row
from ._relay_state import RelayState
from ._startup import when_ready

__all__ = ["NATS_FAILURES", "Publishing", "Stopped", "check_options", "settle"]

logger: Final = logging.getLogger("hookbus.outbox")
# What NATS answers when it is slow, gone or refusing (a full stream): worth sending again.
# Anything else (a bug, a database error) stops the relay.
NATS_FAILURES: Final = (nats.errors.Error, asyncio.TimeoutError, OSError)
_decode_headers: Final = msgspec.json.Decoder(dict[str, str]).decode


def check_options(batch_size: int, **positive: float) -> None:
    """Refuse a relay's options at construction: ``batch_size`` within nats-py's in-flight
    limit, each of ``positive`` above zero."""
    if not 1 <= batch_size <= 4000:
        raise ValueError("batch_size is between 1 and 4000 (nats-py's in-flight limit)")
    for label, value in positive.items():
        if not value > 0:
            raise ValueError(f"{label} must be positive, not {value!r}")


class Stopped(Exception):
    """Asked to stop while a batch waited to be sent again: the batch is left unsaved."""


class Publishing:
    """The publishing half of a relay (a base class: the relay sets the attributes)."""

    __slots__ = (
        "_duplicates",
        "_error",
        "_js",
        "_published",
        "_retries",
        "_stop",
        "ack_timeout",
        "max_backoff",
        "name",
        "retry_horizon",
        "start_wait",
        "stream",
    )

    _js: JetStreamContext
    _stop: asyncio.Event
    _error: str | None
    _published: int
    _duplicates: int
    _retries: int
    name: str
    stream: str
    ack_timeout: float
    max_backoff: float
    retry_horizon: float
    start_wait: float

    def _move(self, new: RelayState) -> None:
        raise NotImplementedError

    async def _check_stream(self) -> None:
        """Refuse a stream whose duplicate window is shorter than ``retry_horizon``; wait
        ``start_wait`` for JetStream to answer for it (``Stopped`` if asked to stop)."""
        info = await when_ready(
            lambda: self._js.stream_info(self.stream),
            self.stream,
            wait=self.start_wait,
            logger=logger,
            stop=self._stop,
        )
        if info is None:
            raise Stopped
        window = info.config.duplicate_window or 0.0
        if window < self.retry_horizon:
            raise DuplicateWindowError(
                f"stream {self.stream!r} keeps message ids for {window:g} s, less than the "
                f"relay's retry horizon of {self.retry_horizon:g} s: a batch re-sent after "
                "the window would be stored twice. Raise the stream's duplicate_window or "
                "lower retry_horizon"
            )

    async def _publish_rows(self, rows: list[Row], check: Callable[[], None]) -> None:
        """Send ``rows`` until every one is acknowledged, backing off while NATS fails;
        ``check()`` before each attempt raises if the relay may no longer publish."""
        delay, first = 0.05, time.monotonic()
        while True:
            check()
            try:
                self._duplicates += await self._send(rows)
                self._published += len(rows)
                return
            except NATS_FAILURES as exc:
                self._error = f"{type(exc).__name__}: {exc}"
                self._retries += 1
                self._move(RelayState.BACKING_OFF)
                late = time.monotonic() - first > self.retry_horizon
                logger.warning(
                    "relay %r: NATS did not acknowledge a batch of %d (%s); sending it again "
                    "in %.2f s%s",
                    self.name,
                    len(rows),
                    self._error,
                    delay,
                    " (past the retry horizon: the stream may store some twice)" if late else "",
                )
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except TimeoutError:
                    pass
                else:
                    raise Stopped from exc
                delay = min(delay * 2, self.max_backoff)
                self._move(RelayState.RELAYING)

    async def _send(self, rows: list[Row]) -> int:
        """Publish ``rows`` with every acknowledgement in flight; the number of duplicates.
        Raises if any is not acknowledged within ``ack_timeout``."""
        publish, wire = self._js.publish_async, WIRE_VERSION  # locals: the hot loop
        futures: list[asyncio.Future[Any]] = []
        try:
            for _, _, subject, event, msg_id, payload, extra in rows:
                headers = {"Nats-Msg-Id": msg_id, "Hookbus-Event": event, "Hookbus-Wire": wire}
                if extra != "{}":  # the row's own (traceparent), never over the envelope's
                    headers = _decode_headers(extra) | headers
                futures.append(await publish(subject, payload, headers=headers))
            _, pending = await asyncio.wait(futures, timeout=self.ack_timeout)
        except BaseException:
            settle(futures)
            raise
        failure = settle(futures)
        if pending:
            raise TimeoutError(
                f"{len(pending)} of {len(rows)} messages not acknowledged in {self.ack_timeout:g} s"
            )
        if failure is not None:
            raise failure
        return sum(1 for future in futures if future.result().duplicate)


def settle(futures: list[asyncio.Future[Any]]) -> BaseException | None:
    """Cancel the futures still pending and retrieve the exception of those that failed (so
    none is logged as "never retrieved" after a failed batch); the first such exception."""
    first: BaseException | None = None
    for future in futures:
        if not future.done():
            future.cancel()
        elif not future.cancelled() and (exc := future.exception()) is not None:
            first = first or exc
    return first
