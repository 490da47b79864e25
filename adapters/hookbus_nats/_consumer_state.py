"""The consumer's lifecycle (an explicit state machine) and its counters."""

from __future__ import annotations

import enum
from typing import Final, final

import msgspec

from hookbus import HookbusError

__all__ = ["ConsumerError", "ConsumerState", "ConsumerStatistics", "Counters", "Lifecycle"]


class ConsumerError(HookbusError):
    """A consumer used out of order, or configured against its stream's guarantees."""


class ConsumerState(enum.Enum):
    """Where a :class:`Consumer` is in its life.

    ``NEW`` -> ``STARTED`` (the durable consumer exists, the subscription is bound) ->
    ``RUNNING`` (``run()`` loops) -> ``STOPPING`` (``stop()`` asked: the batch in hand
    finishes, what committed is acknowledged) -> ``STOPPED``. An error that escapes the loop
    makes it ``FAILED``. ``poll()`` works in ``STARTED`` (a caller driving it by hand). A
    ``stop()`` while ``start()`` waits for JetStream goes from ``NEW`` to ``STOPPED``.
    """

    NEW = "new"
    STARTED = "started"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


_MOVES: Final[dict[ConsumerState, frozenset[ConsumerState]]] = {
    ConsumerState.NEW: frozenset(
        {ConsumerState.STARTED, ConsumerState.STOPPED, ConsumerState.FAILED}
    ),
    ConsumerState.STARTED: frozenset(
        {ConsumerState.RUNNING, ConsumerState.STOPPED, ConsumerState.FAILED}
    ),
    ConsumerState.RUNNING: frozenset({ConsumerState.STOPPING, ConsumerState.FAILED}),
    ConsumerState.STOPPING: frozenset({ConsumerState.STOPPED, ConsumerState.FAILED}),
    ConsumerState.STOPPED: frozenset(),
    ConsumerState.FAILED: frozenset(),
}


class Lifecycle:
    """The state of one consumer: every transition goes through :meth:`move`."""

    __slots__ = ("_name", "state")

    def __init__(self, name: str) -> None:
        self._name = name
        self.state = ConsumerState.NEW

    def move(self, to: ConsumerState) -> None:
        """Go to ``to``, or raise :class:`ConsumerError` if that move is not allowed."""
        if to not in _MOVES[self.state]:
            raise ConsumerError(
                f"consumer {self._name!r} cannot go from {self.state.value} to {to.value}"
            )
        self.state = to

    def require(self, *states: ConsumerState, doing: str) -> None:
        """Refuse ``doing`` unless the consumer is in one of ``states``."""
        if self.state not in states:
            allowed = " or ".join(s.value for s in states)
            raise ConsumerError(
                f"consumer {self._name!r} is {self.state.value}: {doing} needs it {allowed}"
            )


class ConsumerStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """An immutable snapshot of a consumer's counters since it was built.

    ``applied``: messages whose hooks ran and committed; ``duplicates``: messages the inbox
    already held (a redelivery, a re-send, a replay), acknowledged without running hooks;
    ``redelivered``: messages delivered more than once; ``retried``: deliveries whose hooks
    failed, negatively acknowledged with a delay; ``dead_lettered``: messages stored as dead
    letters and terminated; ``batches``: transactions that applied a whole fetch;
    ``fallbacks``: fetches that failed as a whole and were applied one message at a time.
    """

    applied: int = 0
    duplicates: int = 0
    redelivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    batches: int = 0
    fallbacks: int = 0


@final
class Counters:
    """The consumer's counters, kept by the consumer and its failures alike."""

    __slots__ = (
        "applied",
        "batches",
        "dead_lettered",
        "duplicates",
        "fallbacks",
        "redelivered",
        "retried",
    )

    def __init__(self) -> None:
        self.applied = self.batches = self.dead_lettered = self.duplicates = 0
        self.fallbacks = self.redelivered = self.retried = 0

    def snapshot(self) -> ConsumerStatistics:
        return ConsumerStatistics(**{name: getattr(self, name) for name in self.__slots__})
