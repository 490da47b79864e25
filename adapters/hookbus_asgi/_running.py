"""The request scopes running now, so that a server's shutdown waits for them, bounded.

Once the connection goes back to its pool before postcommit runs, a request's postcommit may
still be running when the server shuts down (uvicorn sends the lifespan shutdown once its
graceful-shutdown timeout has cancelled the requests left; a cancelled scope still finishes
its COMMIT or its rollback). The lifespan waits for them before ``server_shutdown`` and
before the application closes its pool, up to a bound, then logs what it abandoned.

The lifespan puts one ``RunningScopes`` in the ASGI lifespan state, which the server copies
into each request's ``scope["state"]``: that is where ``TransactionMiddleware`` finds it.
"""

from __future__ import annotations

import logging
from typing import Final, final

import anyio

__all__ = ["DEFAULT_WAIT", "KEY", "RunningScopes", "check_wait", "wait_for_scopes"]

logger: Final = logging.getLogger("hookbus.asgi")

#: How long a shutdown waits for running request scopes by default, in seconds: below the
#: 30 s most process managers (systemd, Kubernetes) give a process before they kill it.
DEFAULT_WAIT: Final = 10.0

#: The key of the ASGI lifespan state (and so of each request's ``scope["state"]``).
KEY: Final = "hookbus_asgi.running_scopes"


@final
class RunningScopes:
    """The request scopes open now: what each one is doing, for the shutdown to wait on."""

    __slots__ = ("_idle", "_open")

    def __init__(self) -> None:
        self._open: dict[object, str] = {}
        self._idle: anyio.Event | None = None

    def __len__(self) -> int:
        return len(self._open)

    def enter(self, request: object, doing: str) -> None:
        """Record that ``request``'s scope is open, ``doing`` saying what it does."""
        self._open[request] = doing

    def leave(self, request: object) -> None:
        """Record that ``request``'s scope has ended."""
        self._open.pop(request, None)
        if not self._open and self._idle is not None:
            self._idle.set()

    async def idle(self) -> None:
        """Wait until no scope is open (the caller bounds the wait)."""
        while self._open:
            self._idle = anyio.Event()
            await self._idle.wait()

    def doing(self) -> list[str]:
        """What each scope still open is doing."""
        return sorted(self._open.values())


async def wait_for_scopes(running: RunningScopes, shutdown_wait: float) -> None:
    """The shutdown's wait: ``shutdown_wait`` s at most for the open scopes, then log the rest."""
    if not running:
        return
    logger.info(
        "shutdown: waiting up to %.3g s for %d request scope(s)", shutdown_wait, len(running)
    )
    with anyio.move_on_after(shutdown_wait):
        await running.idle()
    if running:
        left = running.doing()
        logger.error(
            "shutdown: %d request scope(s) still running after %.3g s, abandoned: %s",
            len(left),
            shutdown_wait,
            "; ".join(left),
        )


def check_wait(shutdown_wait: float) -> float:
    """Refuse, when the application is built, a bound that is not a number of seconds >= 0."""
    if (
        isinstance(shutdown_wait, bool)
        or not isinstance(shutdown_wait, int | float)
        or not shutdown_wait >= 0
    ):
        raise ValueError(f"shutdown_wait must be a number of seconds >= 0, not {shutdown_wait!r}")
    return float(shutdown_wait)
