"""The relay's lifecycle: an enum of states and the one table of the moves allowed.

::

    NEW -> STARTING -> RELAYING <-> WAITING   (STARTING -> WAITING: nothing to send)
                          |  ^
                          v  |
                       BACKING_OFF
    any state but STOPPED and FAILED -> STOPPED (asked to stop) or FAILED (an error)

STARTING checks the stream's duplicate window, takes the relay's fenced lock (a standby
waits here) and checks the cursor. RELAYING publishes a batch and saves the cursor; WAITING
has nothing committed to publish and waits for a NOTIFY or the poll interval; BACKING_OFF
waits after NATS failed to acknowledge a batch, before the same batch is sent again.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from hookbus import HookbusError

__all__ = ["RelayState", "RelayStateError", "check_move"]


class RelayState(enum.Enum):
    """Where a relay is in its lifecycle."""

    NEW = "new"
    STARTING = "starting"
    RELAYING = "relaying"
    WAITING = "waiting"
    BACKING_OFF = "backing off"
    STOPPED = "stopped"
    FAILED = "failed"


class RelayStateError(HookbusError, RuntimeError):
    """A move the relay's lifecycle does not allow (a relay is run once)."""


_S = RelayState
_ENDS: Final = frozenset({_S.STOPPED, _S.FAILED})
MOVES: Final[Mapping[RelayState, frozenset[RelayState]]] = {
    _S.NEW: frozenset({_S.STARTING}) | _ENDS,
    _S.STARTING: frozenset({_S.RELAYING, _S.WAITING}) | _ENDS,
    _S.RELAYING: frozenset({_S.WAITING, _S.BACKING_OFF}) | _ENDS,
    _S.WAITING: frozenset({_S.RELAYING}) | _ENDS,
    _S.BACKING_OFF: frozenset({_S.RELAYING}) | _ENDS,
    _S.STOPPED: frozenset(),
    _S.FAILED: frozenset(),
}


def check_move(old: RelayState, new: RelayState) -> None:
    """Refuse a move the table does not allow (moving to the same state is no move)."""
    if new is not old and new not in MOVES[old]:
        raise RelayStateError(f"a relay cannot go from {old.value} to {new.value}")
