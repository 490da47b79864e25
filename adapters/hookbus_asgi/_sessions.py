"""``session_open`` and ``session_close`` around each HTTP request and websocket."""

from __future__ import annotations

from typing import final

from hookbus import Bus, SessionEvent

from ._types import ASGIApp, Receive, Scope, Send

__all__ = ["SessionMiddleware"]


@final
class SessionMiddleware:
    """Emit ``session_open`` before each HTTP request or websocket, ``session_close`` after.

    The payload is ``hookbus.SessionEvent`` whose ``session`` is the connection's ASGI scope
    (the mapping a framework's ``Request`` wraps). ``session_close`` is emitted whatever the
    outcome, once the application has returned (the response is sent); ``session_open``
    failing refuses the connection (the error propagates, the server answers 500).
    Other ASGI scopes (``lifespan``) pass through.
    """

    __slots__ = ("_bus", "app")

    def __init__(self, app: ASGIApp, bus: Bus) -> None:
        if not isinstance(bus, Bus):
            raise TypeError(f"bus must be a hookbus.Bus, not {type(bus).__name__}")
        self.app = app
        self._bus = bus

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        bus = self._bus
        await bus.emit("session_open", SessionEvent("session_open", scope))
        try:
            await self.app(scope, receive, send)
        finally:
            await bus.emit("session_close", SessionEvent("session_close", scope))
