"""The states of a transaction scope and their legal moves: the table both the scope and its
savepoints read (neither imports the other)."""

from __future__ import annotations

import enum
from typing import Final, final

__all__ = ["MOVES", "OPEN", "TransactionState"]


@final
class TransactionState(enum.Enum):
    """The states of a transaction scope.

    ``NEW`` until entered; ``ACTIVE`` while the block runs; ``PRECOMMITTING`` during the
    precommit phase; ``COMMITTING`` while COMMIT is sent; then ``COMMITTED`` (postcommit runs
    in it). A scope that fails goes through ``ROLLING_BACK`` (revertprecommit, ROLLBACK) to
    ``ROLLED_BACK`` (rollback operations run in it). ``FAILED``: BEGIN failed, or the outcome
    of COMMIT is unknown. Operations can be scheduled in ``ACTIVE`` and ``PRECOMMITTING`` only.
    """

    # Members are singletons compared by identity: hash them by identity too, in C. (Enum's
    # own __hash__ is a Python call, and the state table hashes states on every move.)
    __hash__ = object.__hash__

    NEW = "new"
    ACTIVE = "active"
    PRECOMMITTING = "precommitting"
    COMMITTING = "committing"
    COMMITTED = "committed"
    ROLLING_BACK = "rolling back"
    ROLLED_BACK = "rolled back"
    FAILED = "failed"


_S = TransactionState
# Every legal move of the state machine, in one place.
MOVES: Final[dict[TransactionState, frozenset[TransactionState]]] = {
    _S.NEW: frozenset({_S.ACTIVE, _S.FAILED}),
    _S.ACTIVE: frozenset({_S.PRECOMMITTING, _S.ROLLING_BACK}),
    _S.PRECOMMITTING: frozenset({_S.COMMITTING, _S.ROLLING_BACK}),
    _S.COMMITTING: frozenset({_S.COMMITTED, _S.ROLLING_BACK, _S.FAILED}),
    _S.COMMITTED: frozenset(),
    _S.ROLLING_BACK: frozenset({_S.ROLLED_BACK}),
    _S.ROLLED_BACK: frozenset(),
    _S.FAILED: frozenset(),
}
# The states in which the scope takes operations, marks, a doom and savepoints.
OPEN: Final = frozenset({_S.ACTIVE, _S.PRECOMMITTING})
