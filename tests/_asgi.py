"""Helpers of the web tests: an in-process client with the lifespan, and a scripted ASGI call."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from asgi_lifespan import LifespanManager


@contextlib.asynccontextmanager
async def served(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app`` in process, its lifespan started before and stopped after."""
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def call(
    app: Any,
    messages: list[Any],
    *,
    path: str = "/",
    method: str = "POST",
    state: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Call ``app`` for one HTTP request whose receive gives ``messages``; return what it sent.

    Each message is a dict, or a callable awaited for it (to disconnect at a chosen moment).
    Once ``messages`` are used up, receive waits (the client stays connected) and repeats the
    last message if it was ``http.disconnect``. ``state`` is the lifespan state, which a
    server copies into each request's scope.
    """
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    if state is not None:
        scope["state"] = dict(state)
    pending = list(messages)
    sent: list[dict[str, Any]] = []

    last: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        nonlocal last
        if not pending:
            if last.get("type") != "http.disconnect":
                await anyio.sleep_forever()
            return last
        message = pending.pop(0)
        last = await message() if callable(message) else message
        return last

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    return sent


async def run_lifespan(app: Any, scope: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Drive ``app``'s lifespan as a server does: start-up, then (if it completed) shut-down.

    Returns the messages the application sent. (asgi-lifespan's manager waits out its timeout
    on ``lifespan.startup.failed``, which these tests need to see.)
    """
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))

    await app(scope or {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return sent
