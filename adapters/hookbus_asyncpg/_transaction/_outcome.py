"""The outcome of a COMMIT whose connection was lost: the transaction's id, then its status.

Where the scope's first write returned the transaction's id (the store's inserts do:
``RETURNING ..., pg_current_xact_id()``), COMMIT is sent plain and that id is the one asked
about. Otherwise, just before COMMIT, in the same round trip, a DO block sends the
transaction's id in a NOTICE that starts with a nonce drawn for this COMMIT: PostgreSQL
flushes a notice at once, so the id has arrived if the connection is lost during the COMMIT
itself, and no other notice (a deferred trigger's, say) can pass for it. Where PostgreSQL
refuses the DO block (plpgsql not granted), the id is asked with a round trip of its own
instead. With the id, the outcome is asked of PostgreSQL (``pg_xact_status``) on another
connection.
"""

from __future__ import annotations

import itertools
import logging
import os
from typing import Any, Final, TypeAlias, final

import asyncpg

from hookbus import CommitOutcome, CommitOutcomeUnknownError, StatusOf, find_commit_outcome

from ._options import TransactionOptions

__all__ = ["ASK_XID", "NOT_RECEIVED", "Xid", "XidNotice", "find_outcome", "is_connection_loss"]

logger: Final = logging.getLogger("hookbus")

# The nonce of each notice: a secret drawn once per process, then a count (drawing 8 random
# bytes per COMMIT was a getrandom system call per COMMIT). Nothing outside this process
# knows the secret, so no other notice can pass for ours; a count never repeats.
_SECRET: Final = os.urandom(8).hex()
_NONCES: Final = itertools.count()

# No pg_catalog. prefix: it is searched first unless a search_path deliberately lists it later.
#: The transaction's id, asked with a round trip (where the DO block is refused).
ASK_XID: Final = "SELECT pg_current_xact_id_if_assigned()::text"
_XACT_STATUS: Final = "SELECT pg_xact_status($1::text::xid8)"


@final
class _NotReceived:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_RECEIVED"


#: No id has arrived (which is not the same as a transaction that had none: ``None``).
NOT_RECEIVED: Final = _NotReceived()
#: What is known of a transaction's id: the id, ``None`` (it had none), or ``NOT_RECEIVED``.
Xid: TypeAlias = "str | _NotReceived | None"


@final
class XidNotice:
    """A log listener that catches the first NOTICE carrying this COMMIT's nonce.

    ``xid`` is the transaction's id, ``None`` if it had none yet (it wrote no row; a NOTIFY
    takes its id during COMMIT), or ``NOT_RECEIVED``. ``statement`` sends the notice, then
    COMMIT. Its nonce is the process's secret and a count: no two COMMITs of the process
    share it. The DO block runs inside a savepoint, so that where it is refused the
    transaction survives and can still commit.
    """

    __slots__ = ("_prefix", "statement", "xid")

    def __init__(self) -> None:
        self._prefix = prefix = f"hookbus xid {_SECRET}{next(_NONCES):x} "
        self.xid: Xid = NOT_RECEIVED
        # client_min_messages is raised for the rest of the transaction only, in case the
        # session filters notices out; pg_current_xact_id_if_assigned() assigns no id. The
        # savepoint is not released: COMMIT commits it with the rest (one statement less).
        self.statement = (
            "SAVEPOINT hookbus_xid; SET LOCAL client_min_messages = notice; "
            f"DO $$BEGIN RAISE NOTICE '{prefix}%', pg_current_xact_id_if_assigned(); END$$; "
            "COMMIT"
        )

    def __call__(self, connection: object, message: Any) -> None:
        if self.xid is not NOT_RECEIVED:
            return  # the first one is ours: it is sent before COMMIT runs any trigger
        text = str(getattr(message, "message", ""))
        if text.startswith(self._prefix):
            xid = text[len(self._prefix) :].strip()
            self.xid = None if xid in ("", "<NULL>") else xid


async def find_outcome(
    xid: Xid,
    lost: Exception,
    options: TransactionOptions,
    pool: asyncpg.Pool | None,
) -> CommitOutcome:
    """Find out what became of a COMMIT whose connection was lost, asking on ``pool``.

    Returns ``COMMITTED``; raises ``TransactionAbortedError`` when PostgreSQL rolled it back,
    ``CommitOutcomeUnknownError`` when the outcome cannot be found.
    """
    if not options.find_outcome:
        raise CommitOutcomeUnknownError(
            "the connection was lost during COMMIT and the scope was opened with "
            "find_outcome=False; neither postcommit nor rollback ran"
        ) from lost
    if xid is NOT_RECEIVED:
        raise CommitOutcomeUnknownError(
            "the connection was lost during COMMIT before the transaction's id was received, "
            "so its outcome cannot be asked; neither postcommit nor rollback ran"
        ) from lost
    if xid is None:
        raise CommitOutcomeUnknownError(
            "the connection was lost during COMMIT of a transaction that had no transaction "
            "id before COMMIT (it wrote no row; a NOTIFY it sent takes its id during COMMIT and "
            "is delivered only if it committed); its outcome is unknown; neither postcommit "
            "nor rollback ran"
        ) from lost
    assert isinstance(xid, str)
    if pool is None:
        raise CommitOutcomeUnknownError(
            f"the connection was lost during COMMIT of transaction {xid} and no pool was "
            "given to ask PostgreSQL its outcome; neither postcommit nor rollback ran"
        ) from lost
    return await find_commit_outcome(
        xid,
        _asking(pool),
        lost=lost,
        within=options.outcome_timeout,
        lost_too=_lost_too,
    )


def _asking(pool: asyncpg.Pool) -> StatusOf:
    """``status_of(xid)``: ``pg_xact_status`` asked on a connection of ``pool``."""

    async def status_of(xid: str) -> str | None:
        async with pool.acquire() as other:
            status: str | None = await other.fetchval(_XACT_STATUS, xid)
            return status

    return status_of


def _lost_too(exc: BaseException) -> bool:
    # asyncpg may refuse a connection whose session just ended ("cannot switch to state").
    return is_connection_loss(exc) or isinstance(exc, asyncpg.InternalClientError)


def is_connection_loss(exc: BaseException) -> bool:
    """Tell whether ``exc`` says the connection was lost (rather than a statement refused)."""
    return isinstance(
        exc,
        asyncpg.PostgresConnectionError
        | asyncpg.AdminShutdownError
        | asyncpg.InterfaceError
        | OSError
        | ConnectionError,
    )
