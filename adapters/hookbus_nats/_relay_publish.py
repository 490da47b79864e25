"""What both relays (ordered ``Relay``, ``UnorderedRelay``) share: the stream's check at the
start, and a batch published with every acknowledgement in flight, sent again after a
backoff while NATS fails.

A message carries the row's ``msg_id`` as ``Nats-Msg-Id``, so a batch sent again is dropped
by JetStream as a duplicate while within the stream's duplicate window; the relays refuse a
stream whose window is shorter than their ``retry_horizon``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import msgspec
import nats.errors
import nats.js.errors
from hookbus_asyncpg import WIRE_VERSION
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import Header

from ._relay_errors import DuplicateWindowError
from ._relay_sql import Row
from ._relay_state import RelayState
from ._startup import when_ready

__all__ = ["NATS_FAILURES", "Publishing", "Stopped", "check_options"]

logger: Final = logging.getLogger("hookbus.outbox")
# What NATS answers when it is slow, gone or refusing (a full stream): worth sending again.
# Anything else (a bug, a database error) stops the relay.
NATS_FAILURES: Final = (nats.errors.Error, asyncio.TimeoutError, OSError)
_decode_headers: Final = msgspec.json.Decoder(dict[str, str]).decode


def check_options(batch_size: int, **positive: float) -> None:
    """Refuse a relay's options at construction: ``batch_size`` within nats-py's in-flight
    limit, each of ``positive`` above zero."""
    if not 1 <= batch_size <= 4000:
        raise ValueError("batch_size is between 1 and 4000 (the messages in flight at once)")
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
        "_nc",
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

    _nc: Client
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
        Raises if any is not acknowledged within ``ack_timeout``, or if JetStream refused any.

        JetStream answers each message on the reply subject it names: here one inbox for the
        attempt, its answers counted as they come (``_Acks``), rather than ``publish_async``'s
        future, callbacks and reply subject per message (most of the relay's time went there).
        """
        nc = self._nc
        publish, wire = nc.publish, WIRE_VERSION  # locals: the hot loop
        inbox = nc.new_inbox()
        acks = _Acks(len(rows))
        # subscribed before the first publish (the SUB goes out ahead of the messages);
        # unsubscribed once the attempt is over: a late answer to it goes nowhere
        sub = await nc.subscribe(inbox, cb=acks.take)
        try:
            for _, _, subject, event, msg_id, payload, extra in rows:
                headers = {"Nats-Msg-Id": msg_id, "Hookbus-Event": event, "Hookbus-Wire": wire}
                if extra != "{}":  # the row's own (traceparent), never over the envelope's
                    headers = _decode_headers(extra) | headers
                await publish(subject, payload, inbox, headers)
            try:
                await asyncio.wait_for(acks.done, self.ack_timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"{len(rows) - acks.received} of {len(rows)} messages not acknowledged in "
                    f"{self.ack_timeout:g} s"
                ) from None
        finally:
            with contextlib.suppress(*NATS_FAILURES):  # a closed connection took it already
                await sub.unsubscribe()
        if acks.failure is not None:
            raise acks.failure
        return acks.duplicates


class _Ack(msgspec.Struct):
    """What JetStream answers a message: stored (perhaps as a ``duplicate``), or an error."""

    duplicate: bool = False
    error: dict[str, Any] | None = None


_decode_ack: Final = msgspec.json.Decoder(_Ack).decode


class _Acks:
    """The answers to one attempt at a batch: ``done`` once ``expected`` have come; the
    duplicates among them, and the first refusal (``failure``)."""

    __slots__ = ("done", "duplicates", "expected", "failure", "received")

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = self.duplicates = 0
        self.failure: nats.errors.Error | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def take(self, msg: Msg) -> None:
        """Count one answer (the subscription's callback)."""
        if msg.headers and Header.STATUS in msg.headers:  # no stream took it (503), or worse
            status = msg.headers[Header.STATUS]
            self._refused(
                nats.js.errors.NoStreamResponseError()
                if status == "503"
                else nats.errors.Error(f"JetStream answered status {status}")
            )
        else:
            try:
                ack = _decode_ack(msg.data)
            except msgspec.DecodeError:
                self._refused(nats.errors.Error(f"an unreadable acknowledgement: {msg.data!r}"))
            else:
                if ack.error is not None:
                    try:
                        nats.js.errors.APIError.from_error(ack.error)  # raises its kind
                    except nats.js.errors.APIError as exc:
                        self._refused(exc)
                else:
                    self.duplicates += ack.duplicate
        self.received += 1
        if self.received == self.expected and not self.done.done():
            self.done.set_result(None)

    def _refused(self, exc: nats.errors.Error) -> None:
        if self.failure is None:
            self.failure = exc
