"""session_open / session_close around each request and websocket (SessionMiddleware)."""

from __future__ import annotations

from typing import Any

import asyncpg
import hookbus_asyncpg
import pytest
from _asgi import call
from hookbus_asgi import SessionMiddleware, TransactionMiddleware

from hookbus import Bus, SessionEvent, TransactionStateError, current_transaction


def recording(log: list[tuple[str, str]]) -> Bus:
    bus = Bus()

    @bus.hook("session_open", "session_close")
    def record(event: SessionEvent) -> None:
        log.append((event.event, event.session["type"]))

    return bus


async def websocket(app: Any) -> list[dict[str, Any]]:
    """Open a websocket on ``app``, let it accept and close; return what it sent."""
    incoming = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "websocket", "path": "/ws", "headers": []}, receive, send)
    return sent


async def echo_socket(scope: Any, receive: Any, send: Any) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": 1000})


async def test_a_websocket_is_surrounded_by_session_events() -> None:
    log: list[tuple[str, str]] = []
    sent = await websocket(SessionMiddleware(echo_socket, recording(log)))
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]
    assert log == [("session_open", "websocket"), ("session_close", "websocket")]


async def test_session_close_is_emitted_when_the_request_fails() -> None:
    log: list[tuple[str, str]] = []

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise LookupError("the endpoint fails")

    with pytest.raises(LookupError):
        await call(SessionMiddleware(failing, recording(log)), [])
    assert log == [("session_open", "http"), ("session_close", "http")]


async def test_the_lifespan_passes_through_without_session_events() -> None:
    log: list[tuple[str, str]] = []
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    await SessionMiddleware(app, recording(log))({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert (seen, log) == (["lifespan"], [])


async def test_a_websocket_gets_no_transaction_scope(pool: asyncpg.Pool) -> None:
    outside: list[bool] = []

    async def socket(scope: Any, receive: Any, send: Any) -> None:
        try:
            current_transaction()
        except TransactionStateError:
            outside.append(True)
        await echo_socket(scope, receive, send)

    await websocket(TransactionMiddleware(socket, lambda: hookbus_asyncpg.transaction(pool)))
    assert outside == [True]
