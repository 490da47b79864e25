"""A real server for the web tests: uvicorn in a subprocess, on a free port of 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
READY = "Uvicorn running on"
START_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Uvicorn:
    """One ``uvicorn --lifespan on`` process: its pid, its port and what it logged."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    @property
    def output(self) -> str:
        return "".join(self.log)

    async def _line(self, deadline: float) -> str:
        assert self.process.stderr is not None
        timeout = deadline - asyncio.get_running_loop().time()
        line = (await asyncio.wait_for(self.process.stderr.readline(), max(timeout, 0))).decode()
        self.log.append(line)
        return line

    async def wait_listening(self) -> None:
        """Wait (bounded) until the server says it listens, then check that the port answers."""
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while READY not in (line := await self._line(deadline)):
            if not line:
                raise RuntimeError(f"uvicorn exited before listening:\n{self.output}")
        _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.close()
        await writer.wait_closed()
        self._drain = asyncio.create_task(self._read_rest())

    async def wait_exit(self) -> int:
        """Wait (bounded) for the process to exit, reading its log to the end."""
        if self._drain is None:
            self._drain = asyncio.create_task(self._read_rest())
        await asyncio.wait_for(self._drain, START_TIMEOUT)
        return await asyncio.wait_for(self.process.wait(), START_TIMEOUT)

    async def _read_rest(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.log.append(line.decode())

    def terminate(self) -> None:
        """SIGTERM, as a process manager stops a server."""
        os.kill(self.process.pid, signal.SIGTERM)


def uvicorn(target: str, *, cwd: Path, env: dict[str, str]) -> Any:
    """Start ``uvicorn target --lifespan on`` on a free port; kill it by its pid at the end."""
    port = free_port()
    argv = ["-m", "uvicorn", *target.split(), "--host", "127.0.0.1", "--port", str(port)]
    return serve([*argv, "--lifespan", "on", "--no-access-log"], port, cwd=cwd, env=env)


@contextlib.asynccontextmanager
async def serve(
    argv: list[str], port: int, *, cwd: Path, env: dict[str, str]
) -> AsyncIterator[Uvicorn]:
    """Run ``python argv`` (a uvicorn server on ``port``); kill it by its pid at the end."""
    pythonpath = os.pathsep.join([str(ROOT / "adapters"), str(ROOT), str(cwd)])
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv,
        cwd=cwd,
        env={**os.environ, **env, "PYTHONPATH": pythonpath},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    server = Uvicorn(process, port)
    try:
        yield server
    finally:
        if process.returncode is None:
            process.kill()  # by its pid: only what this test started
            await process.wait()
        if server._drain is not None:
            server._drain.cancel()
