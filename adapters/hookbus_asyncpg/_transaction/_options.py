"""The options of an asyncpg transaction scope: one immutable object, checked when it is built."""

from __future__ import annotations

import dataclasses
from typing import Any, Final, Literal, TypeAlias, final

import asyncpg

__all__ = ["Isolation", "TransactionOptions"]

Isolation: TypeAlias = Literal[
    "read_committed", "read_uncommitted", "repeatable_read", "serializable"
]

_ISOLATION: Final[dict[str, str]] = {
    "read_committed": " ISOLATION LEVEL READ COMMITTED",
    "read_uncommitted": " ISOLATION LEVEL READ UNCOMMITTED",
    "repeatable_read": " ISOLATION LEVEL REPEATABLE READ",
    "serializable": " ISOLATION LEVEL SERIALIZABLE",
}


@final
@dataclasses.dataclass(frozen=True, slots=True)
class TransactionOptions:
    """How a scope's transaction is begun, and how a lost COMMIT's outcome is found.

    Every field is checked here, once: a bad option fails where ``transaction()`` is called,
    not at BEGIN. ``isolation``, ``readonly`` and ``deferrable`` are asyncpg's names for
    BEGIN's options. If the connection drops during COMMIT, the outcome is asked of
    PostgreSQL on a connection of ``recovery_pool`` (by default the scope's own pool), for up
    to ``outcome_timeout`` seconds; ``find_outcome=False`` never asks, and a lost COMMIT is
    then an unknown outcome. ``independent=True`` opens a transaction of its own even inside
    another scope on the same pool, instead of joining it as a savepoint.

    >>> TransactionOptions(isolation="serializable").begin
    'BEGIN ISOLATION LEVEL SERIALIZABLE'
    """

    isolation: Isolation | None = None
    readonly: bool = False
    deferrable: bool = False
    recovery_pool: asyncpg.Pool | None = None
    outcome_timeout: float = 5.0
    find_outcome: bool = True
    independent: bool = False
    #: The BEGIN statement these options give (derived, not an argument).
    begin: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.isolation is not None and self.isolation not in _ISOLATION:
            raise ValueError(
                f"isolation must be one of {sorted(_ISOLATION)} or None, not {self.isolation!r}"
            )
        for name in ("readonly", "deferrable", "find_outcome", "independent"):
            _check_bool(name, getattr(self, name))
        timeout = self.outcome_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ValueError(f"outcome_timeout must be a number of seconds > 0, not {timeout!r}")
        if self.recovery_pool is not None and not isinstance(self.recovery_pool, asyncpg.Pool):
            raise TypeError(
                f"recovery_pool must be an asyncpg.Pool or None, not {self.recovery_pool!r}"
            )
        sql = "BEGIN" + (_ISOLATION[self.isolation] if self.isolation else "")
        if self.readonly:
            sql += " READ ONLY"
        if self.deferrable:
            sql += " DEFERRABLE"
        object.__setattr__(self, "begin", sql)

    def conflicts_with(self, outer: TransactionOptions) -> str | None:
        """Say which option a scope joining ``outer``'s transaction would change, if any."""
        if self.isolation is not None and self.isolation != outer.isolation:
            return f"isolation={self.isolation!r}"
        if self.readonly and not outer.readonly:
            return "readonly=True"
        if self.deferrable and not outer.deferrable:
            return "deferrable=True"
        return None


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")


#: The options of ``transaction(pool)`` called without any.
DEFAULT: Final = TransactionOptions()
