"""A relay in a process of its own, for tests that kill it by pid at a chosen point.

    python tests/_relay_process.py DSN NATS_URL STREAM POINT

POINT is where the relay stops to be killed, after printing the word on its own line:
``read`` (a batch read from the committed outbox, not published yet), ``acked`` (a batch
published and acknowledged, its cursor not saved yet), or ``none`` (it runs until SIGTERM).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import hookbus_nats
import hookbus_nats._relay as relay_module
import nats


async def _hang(word: str) -> None:
    print(word, flush=True)
    await asyncio.Event().wait()  # until killed


async def main(dsn: str, url: str, stream: str, point: str) -> None:
    if point == "read":

        async def send(self: Any, rows: Any) -> int:
            await _hang("read")
            return 0

        hookbus_nats.Relay._send = send  # type: ignore[method-assign]
    elif point == "acked":

        async def save(*args: Any) -> None:
            await _hang("acked")

        relay_module.save_cursor = save  # type: ignore[assignment]
    nc = await nats.connect(url)
    relay = hookbus_nats.Relay(dsn, nc.jetstream(), stream=stream, poll_interval=0.05)
    print("started", flush=True)
    await relay.run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
