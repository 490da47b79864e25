"""A relay in a process of its own, for tests that kill it by pid at a chosen point.

    python tests/_relay_process.py DSN NATS_URL STREAM POINT [unordered]

POINT is where the relay stops to be killed, after printing the word on its own line:
``read`` (a batch read from the committed outbox, not published yet), ``acked`` (a batch
published and acknowledged, its cursor not saved yet; unordered: its rows not marked sent,
its transaction not committed), or ``none`` (it runs until SIGTERM). ``unordered`` runs an
``UnorderedRelay`` instead of the ordered one.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import hookbus_nats
import hookbus_nats._relay as relay_module
import hookbus_nats._relay_unordered as unordered_module
import nats


async def _hang(word: str) -> None:
    print(word, flush=True)
    await asyncio.Event().wait()  # until killed


async def main(dsn: str, url: str, stream: str, point: str, mode: str = "ordered") -> None:
    kind = hookbus_nats.UnorderedRelay if mode == "unordered" else hookbus_nats.Relay
    if point == "read":

        async def send(self: Any, rows: Any) -> int:
            await _hang("read")
            return 0

        kind._send = send  # type: ignore[method-assign]
    elif point == "acked":

        async def save(*args: Any) -> None:
            await _hang("acked")

        relay_module.save_cursor = save  # type: ignore[assignment]
        unordered_module.mark_sent = save  # type: ignore[assignment]
    nc = await nats.connect(url)
    relay = kind(dsn, nc, stream=stream, poll_interval=0.05)
    print("started", flush=True)
    await relay.run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
