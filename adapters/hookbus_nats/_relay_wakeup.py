"""The relay's wake-up: LISTEN on a connection of its own, polling as the guarantee.

A NOTIFY is a hint: sent at COMMIT, never replayed, lost while the listening connection is
down, and a connection can die without a word (a dropped network path). So the relay never
waits longer than its poll interval, and the listening connection is probed every
``probe_interval``: one that fails the probe, or that asyncpg reports terminated, is closed
and opened again at the next wait, polling meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, final

from hookbus_asyncpg import OUTBOX_CHANNEL

__all__ = ["Wakeup"]

logger: Final = logging.getLogger("hookbus.outbox")


@final
class Wakeup:
    """Waits for a NOTIFY on ``hookbus_outbox``, at most the timeout given to ``wait``."""

    __slots__ = ("_conn", "_connect", "_event", "_probed", "probe_interval", "reconnects")

    def __init__(
        self, connect: Callable[[], Awaitable[Any]], *, probe_interval: float = 10.0
    ) -> None:
        self._connect = connect
        self._conn: Any = None
        self._event = asyncio.Event()
        self._probed = 0.0
        self.probe_interval = probe_interval
        self.reconnects = -1  # the first connection is no reconnection

    @property
    def listening(self) -> bool:
        """Whether a listening connection is open (else the relay only polls)."""
        return self._conn is not None and not self._conn.is_closed()

    @property
    def pid(self) -> int | None:
        """The server pid of the listening connection, if any."""
        return self._conn.get_server_pid() if self.listening else None

    def nudge(self) -> None:
        """End the current (or next) wait now."""
        self._event.set()

    def heard(self) -> bool:
        """Whether a NOTIFY (or a nudge) came since the last wait or ``heard``: what a wait
        would return at once. Forgets it, as a wait does."""
        if not self._event.is_set():
            return False
        self._event.clear()
        return True

    def _heard(self, *_: object) -> None:
        self._event.set()

    def _terminated(self, *_: object) -> None:
        logger.warning("the outbox's listening connection was closed; polling until it is back")
        self._event.set()  # a notification may have been lost with it: look now

    async def _open(self) -> None:
        try:
            conn = await asyncio.wait_for(self._connect(), 10)
            await conn.add_listener(OUTBOX_CHANNEL, self._heard)
        except Exception as exc:  # a server down, refused, slow: poll meanwhile
            logger.warning("cannot LISTEN for the outbox (%s); polling meanwhile", exc)
            return
        conn.add_termination_listener(self._terminated)
        self._conn = conn
        self._probed = time.monotonic()
        self.reconnects += 1

    async def _probe(self) -> None:
        self._probed = time.monotonic()
        try:
            await self._conn.execute("SELECT 1", timeout=5)
        except Exception as exc:
            logger.warning("the outbox's listening connection failed a probe (%s)", exc)
            await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def wait(self, seconds: float) -> bool:
        """Wait for a NOTIFY or ``seconds``; True if notified (or the connection
        dropped: look anyway)."""
        if not self.listening:
            await self._drop()
            await self._open()
        elif time.monotonic() - self._probed > self.probe_interval:
            await self._probe()
        try:
            await asyncio.wait_for(self._event.wait(), seconds)
        except TimeoutError:
            return False
        finally:
            self._event.clear()
        return True

    async def close(self) -> None:
        """Stop listening and close the connection."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.remove_termination_listener(self._terminated)
            try:
                await asyncio.wait_for(conn.close(), 5)
            except Exception:
                conn.terminate()
