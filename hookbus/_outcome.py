"""The outcome of a COMMIT whose connection was lost, asked of the database by transaction id.

An adapter whose COMMIT lost its connection hands ``find_commit_outcome`` the transaction's
id and a small callable, ``status_of(xid)``, that asks the database on another connection
what became of it (PostgreSQL: ``pg_xact_status``, answering ``"committed"``,
``"aborted"``, ``"in progress"`` or ``None``). The finder asks until the answer is no longer
"in progress" (the server may still be finishing the COMMIT), asks again when the connection
it asked on is lost too, and gives up after ``within`` seconds. The same finder serves every
adapter (asyncpg, psycopg, an ORM's session): each writes only ``status_of``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeAlias, final

import anyio

from ._backend import CommitOutcome
from ._exceptions import CommitOutcomeUnknownError, TransactionAbortedError

__all__ = ["StatusOf", "find_commit_outcome"]

logger: Final = logging.getLogger("hookbus")

#: Ask the database the status of the transaction ``xid``, on a connection of its own.
StatusOf: TypeAlias = Callable[[str], Awaitable["str | None"]]

_POLL_INTERVAL: Final = 0.02


@final
class _Asked:
    """What asking found: the last answer, or the error that stopped the asking."""

    __slots__ = ("error", "status")

    def __init__(self) -> None:
        self.status: str | None = "in progress"
        self.error: BaseException | None = None


async def find_commit_outcome(
    xid: str,
    status_of: StatusOf,
    *,
    lost: BaseException,
    within: float,
    lost_too: Callable[[BaseException], bool] = lambda exc: False,
) -> CommitOutcome:
    """Find what became of transaction ``xid``, whose COMMIT lost its connection (``lost``).

    Returns ``COMMITTED``; raises ``TransactionAbortedError`` when the database rolled it
    back, ``CommitOutcomeUnknownError`` (from ``lost``) when the outcome cannot be found
    within ``within`` seconds. ``status_of`` is retried while ``lost_too(error)`` says the
    connection it asked on was lost as well; any other error from it ends the asking.

    The asking runs in a task of its own, shielded: the scope awaits it inside the COMMIT,
    which no cancellation interrupts (its deadline must not be one).
    """
    asked = _Asked()
    with anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as group:
            group.start_soon(_ask, xid, status_of, within, lost_too, asked)
    status = asked.status
    if asked.error is not None:
        raise CommitOutcomeUnknownError(
            f"the connection was lost during COMMIT of transaction {xid} and its outcome "
            f"could not be asked ({asked.error!r}); neither postcommit nor rollback ran"
        ) from lost
    if status == "committed":
        logger.warning("connection lost during COMMIT; transaction %s committed", xid)
        return CommitOutcome.COMMITTED
    if status == "aborted":
        raise TransactionAbortedError(
            f"the connection was lost during COMMIT and the database rolled "
            f"transaction {xid} back; the rollback operations ran"
        ) from lost
    raise CommitOutcomeUnknownError(
        f"the connection was lost during COMMIT of transaction {xid} and the database "
        f"reports it {status!r}; neither postcommit nor rollback ran"
    ) from lost


async def _ask(
    xid: str,
    status_of: StatusOf,
    within: float,
    lost_too: Callable[[BaseException], bool],
    asked: _Asked,
) -> None:
    """Ask until the answer is final, an error ends it, or ``within`` s: into ``asked``."""
    with anyio.move_on_after(within):
        while True:
            try:
                asked.status = await status_of(xid)
            except Exception as exc:
                # The connection asked on may be lost too (a server restart, a mass
                # termination): ask on another one while time remains.
                asked.error = exc
                if not lost_too(exc):
                    return
            else:
                asked.error = None
                if asked.status != "in progress":
                    return
            # The server may still be finishing the COMMIT (or be restarting); nothing can
            # be awaited for it from here, so ask again shortly.
            await anyio.sleep(_POLL_INTERVAL)
