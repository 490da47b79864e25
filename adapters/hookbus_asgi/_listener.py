"""The request's receive channel, read by a task of its own: a client gone is seen at once.

A handler that has read its body never calls ``receive()`` again, so the ``http.disconnect``
of a client that went away would wait for it forever while the handler runs on. Starlette
listens for it beside a streaming response; the listener does it for the whole request. It is
the only reader of the server's ``receive``: it hands the application each message through a
buffer of one, so it reads at most one message ahead (a body the application does not read
is not slurped), and once the body is complete (or when the request has none) it goes on
reading, and tells the request the client left as soon as the server says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, final

import anyio

from ._types import Message, Receive

__all__ = ["Listener"]

_DISCONNECT: Final[Message] = {"type": "http.disconnect"}


@final
class Listener:
    """One request's receive: ``run`` in a task beside the application, ``receive`` for it."""

    __slots__ = ("_messages", "_to_app", "_upstream", "gone", "on_gone")

    def __init__(self, receive: Receive) -> None:
        self._upstream = receive
        self._to_app, self._messages = anyio.create_memory_object_stream[Message](1)
        #: True once the server said the client disconnected.
        self.gone = False
        #: Called (in the listener's task) when the client disconnects.
        self.on_gone: Callable[[], None] | None = None

    async def run(self) -> None:
        """Read the server's messages until the client disconnects (cancelled at the end)."""
        with self._to_app:
            while True:
                message = await self._upstream()
                if message["type"] == "http.disconnect":
                    self.gone = True
                    if self.on_gone is not None:
                        self.on_gone()
                    return  # closing the stream: every later receive() is the disconnect
                await self._to_app.send(message)

    def close(self) -> None:
        """Close the application's side once the request is over."""
        self._messages.close()

    async def receive(self) -> Message:
        """The application's receive: the body, then (once the client left) the disconnect."""
        try:
            return await self._messages.receive()
        except anyio.EndOfStream:
            return _DISCONNECT
