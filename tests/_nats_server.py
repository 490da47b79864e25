"""A ``nats-server`` of the test's own, killed and restarted by its pid, and a client of it.

``Server.start`` returns once the server says it is ready, or fails the test if the process
exits first; ``connect`` reconnects while a test restarts the server, for a bounded time. Neither
waits for ever for a server that is gone.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from hookbus_nats.testing import server_binary

RECONNECT_WAIT = 0.1
RECONNECTS = 600
"""A client's reconnect budget: at ``RECONNECT_WAIT`` apart, a server gone for a minute (the
tests restart theirs within seconds); past it the client closes and the test fails."""


class Server:
    """A ``nats-server`` of the test's own on a fixed port, started and killed by its pid."""

    def __init__(self) -> None:
        self.port, self.monitor = free_port(), free_port()
        self.storage = tempfile.mkdtemp(prefix="hookbus-nats-start-")
        self.log = Path(self.storage) / "server.log"
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, jetstream: bool, config: str | None = None) -> None:
        """Start it (with the configuration file text ``config``, if given), and return once
        it says it is ready (or fail if it exits first: a client's first connection would
        otherwise try for a minute)."""
        self.kill()
        command = [server_binary(), "-a", "127.0.0.1", "-p", str(self.port)]
        command += ["-m", str(self.monitor)]
        if config is not None:
            path = Path(self.storage) / "server.conf"
            path.write_text(config)
            command += ["-c", str(path)]
        if jetstream:
            command += ["-js", "-sd", self.storage]
        seen = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while b"Server is ready" not in self.log.read_bytes()[seen:]:
            said = self.log.read_bytes()[seen:].decode(errors="replace")
            if self.process.poll() is not None:
                raise AssertionError(f"nats-server exited at start: {said}")
            if time.monotonic() > deadline:
                raise AssertionError(f"nats-server not ready after 30 s: {said}")
            time.sleep(0.02)  # a process offers nothing to await

    def kill(self) -> None:
        """SIGKILL, by pid."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture(name="nats")
def nats_fixture() -> Iterator[Server]:
    """A server of the test's own, not started yet; killed and its storage removed after."""
    made = Server()
    try:
        yield made
    finally:
        made.kill()
        shutil.rmtree(made.storage, ignore_errors=True)


def free_port() -> int:
    """A port free now, below the kernel's ephemeral ports (32768 and up): the server is
    restarted on it, and an ephemeral port may meanwhile become another connection's."""
    for _ in range(500):
        port = random.randrange(20000, 32000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port in 20000-32000")


async def connect(url: str, **options: Any) -> nats.NATS:
    """A client of a server that is ready (``Server.start`` returned): its first connection is
    tried twice, then fails the test; once connected it reconnects ``RECONNECTS`` times.
    ``options`` go to ``nats.connect``."""
    try:
        nc = await nats.connect(
            url,
            max_reconnect_attempts=1,
            reconnect_time_wait=RECONNECT_WAIT,
            connect_timeout=5,
            **options,
        )
    except Exception as exc:
        raise AssertionError(f"no NATS server answers at {url}: {exc!r}") from exc
    nc.options["max_reconnect_attempts"] = RECONNECTS  # read at each reconnect
    return nc
