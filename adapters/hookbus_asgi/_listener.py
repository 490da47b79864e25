"""The request's receive channel, read by a task of its own: a client gone is seen at once.

A handler that has read its body never calls ``receive()`` again, so the ``http.disconnect``
of a client that went away would wait for it forever while the handler runs on. Starlette
listens for it beside a streaming response; the listener does it for the whole request. It is
the only reader of the server's ``receive``: it hands the application each message through a
slot of one, so it reads at most one message ahead (a body the application does not read is
not slurped), and once the body is complete (or when the request has none) it goes on
reading, and tells the request the client left as soon as the server says so.

A request sent with ``Expect: 100-continue`` is read only once the application asks for its
body: the server answers ``100 Continue`` at the first ``receive()``, and an application that
refuses the request without reading it must not have the body uploaded for nothing.

The slot is two futures, not a memory stream: a request pays for it on every call, and the
listener's task may be cancelled before it ever ran (a handler that never yields).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Final, final

from ._types import Message, Receive

__all__ = ["Listener", "expects_continue"]

_DISCONNECT: Final[Message] = {"type": "http.disconnect"}


@final
class Listener:
    """One request's receive: ``run`` in a task beside the application, ``receive`` for it."""

    __slots__ = (
        "_asked",
        "_ended",
        "_failed",
        "_slot",
        "_space",
        "_upstream",
        "_waiting",
        "gone",
        "on_gone",
    )

    def __init__(self, receive: Receive, *, wait_for_the_application: bool = False) -> None:
        self._upstream = receive
        # Set at the application's first receive(), when the listener must wait for it.
        self._asked: asyncio.Future[None] | None = (
            asyncio.get_running_loop().create_future() if wait_for_the_application else None
        )
        self._slot: Message | None = None  # a message the application has not taken yet
        self._waiting: asyncio.Future[None] | None = None  # the application waits for one
        self._space: asyncio.Future[None] | None = None  # the listener waits for the slot
        self._ended = False  # no message will come: the client left, or receive failed
        self._failed: Exception | None = None
        #: True once the server said the client disconnected.
        self.gone = False
        #: Called (in the listener's task) when the client disconnects.
        self.on_gone: Callable[[], None] | None = None

    async def run(self) -> None:
        """Read the server's messages until the client disconnects (cancelled at the end).

        What the server's ``receive`` raises is raised by the application's next receive:
        this task is not awaited.
        """
        try:
            if self._asked is not None:
                await self._asked
            while True:
                message = await self._upstream()
                if message["type"] == "http.disconnect":
                    self.gone = True
                    self._end()
                    if self.on_gone is not None:
                        self.on_gone()
                    return
                while self._slot is not None:  # the application has not taken the last one
                    self._space = asyncio.get_running_loop().create_future()
                    await self._space
                self._slot = message
                _wake(self._waiting)
        except Exception as exc:
            self._failed = exc
            self._end()

    def _end(self) -> None:
        self._ended = True
        _wake(self._waiting)

    async def receive(self) -> Message:
        """The application's receive: the body, then (once the client left) the disconnect."""
        _wake(self._asked)
        while (message := self._slot) is None:
            if self._ended:
                if self._failed is not None:
                    raise self._failed
                return _DISCONNECT
            self._waiting = asyncio.get_running_loop().create_future()
            await self._waiting
        self._slot = None
        _wake(self._space)
        return message


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def expects_continue(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Tell whether a request's headers ask for ``100 Continue`` before its body is sent."""
    return any(name == b"expect" and value.lower() == b"100-continue" for name, value in headers)
