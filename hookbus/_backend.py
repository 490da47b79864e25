"""The backend protocol a transaction scope drives, and the in-memory backend.

A backend owns BEGIN, COMMIT, ROLLBACK and savepoints on one database session. The scope
(``hookbus.Transaction``) drives it through the lifecycle; the backend only talks to the
database and reports what the database answered.
"""

from __future__ import annotations

import enum
from typing import Protocol, final

__all__ = ["Backend", "CommitOutcome", "MemoryBackend"]


@final
class CommitOutcome(enum.Enum):
    """What the database answered to COMMIT."""

    #: The transaction is committed.
    COMMITTED = "committed"
    #: The server rolled the transaction back instead (it was aborted by an earlier error).
    ABORTED = "aborted"


class Backend(Protocol):
    """What a transaction scope needs from a database session.

    ``commit`` returns the outcome the server gave; raising from it means the server did not
    commit (a deferred constraint, a serialization failure) and has already rolled back. A
    backend that lost its connection during COMMIT finds the outcome out where it can and
    raises ``CommitOutcomeUnknownError`` where it cannot. ``rollback`` after a lost connection
    may raise: the scope logs that and carries on, the server having rolled back on its own.

    A backend may say ``lazy = True``: every statement of the scope goes through it (or
    through the adapter's connection, which calls ``tx.begin()`` first), so the scope calls
    ``begin`` only at the first statement, never for a scope that sends none. Without it
    the scope begins when it is entered. A backend may have ``async def prepare()``: the
    scope calls it after the precommit phase, before COMMIT, on a scope that began (an ORM
    session flushes there); what it raises fails the scope as a precommit's error does
    (revertprecommit, ROLLBACK, rollback), never as a refused COMMIT. A backend that finds
    the outcome of a lost COMMIT asks it through ``hookbus.find_commit_outcome`` and a
    ``status_of(xid)`` callable of its own. A backend may also have ``async def close()``: the
    scope calls it once the outcome is known (after COMMIT, after ROLLBACK, after a failed
    BEGIN), before any postcommit or rollback operation runs, to give its session back (to
    a pool); what it raises is logged, never raised.
    """

    async def begin(self) -> None:
        """Start the transaction."""
        ...

    async def commit(self) -> CommitOutcome:
        """Commit the transaction and report the outcome."""
        ...

    async def rollback(self) -> None:
        """Roll the transaction back."""
        ...

    async def savepoint(self, name: str) -> None:
        """Set a savepoint called ``name`` (a plain identifier chosen by the scope)."""
        ...

    async def release(self, name: str) -> None:
        """Release the savepoint ``name``: what it did stays in the transaction."""
        ...

    async def rollback_to(self, name: str) -> None:
        """Undo what was done since the savepoint ``name``, and release it."""
        ...


@final
class MemoryBackend:
    """A backend without a database, for tests and scripts.

    It records the statements it would have sent in ``statements``. It begins lazily: a
    scope records BEGIN only once ``await tx.begin()`` (what a statement would do) or a
    savepoint asks. ``commit_error`` makes COMMIT fail with that exception (as a deferred
    constraint would); ``commit_outcome`` makes the server answer with it (``ABORTED``: the
    silent rollback of a swallowed error).

    >>> backend = MemoryBackend()
    """

    __slots__ = ("commit_error", "commit_outcome", "statements")

    #: A scope on it begins at ``tx.begin()`` (its first statement).
    lazy = True

    def __init__(
        self,
        *,
        commit_error: BaseException | None = None,
        commit_outcome: CommitOutcome = CommitOutcome.COMMITTED,
    ) -> None:
        self.statements: list[str] = []
        self.commit_error = commit_error
        self.commit_outcome = commit_outcome

    async def begin(self) -> None:
        """Record BEGIN."""
        self.statements.append("BEGIN")

    async def commit(self) -> CommitOutcome:
        """Record COMMIT; fail with ``commit_error`` or answer ``commit_outcome``."""
        self.statements.append("COMMIT")
        if self.commit_error is not None:
            raise self.commit_error
        return self.commit_outcome

    async def rollback(self) -> None:
        """Record ROLLBACK."""
        self.statements.append("ROLLBACK")

    async def savepoint(self, name: str) -> None:
        """Record SAVEPOINT."""
        self.statements.append(f"SAVEPOINT {name}")

    async def release(self, name: str) -> None:
        """Record RELEASE SAVEPOINT."""
        self.statements.append(f"RELEASE SAVEPOINT {name}")

    async def rollback_to(self, name: str) -> None:
        """Record ROLLBACK TO SAVEPOINT."""
        self.statements.append(f"ROLLBACK TO SAVEPOINT {name}")
