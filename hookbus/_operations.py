"""Operations: work scheduled in a transaction scope, run around its commit.

An operation overrides any of four async methods; each defaults to doing nothing:

``precommit``
    before COMMIT, in scheduling order; raising aborts the transaction.
``revertprecommit``
    when the transaction fails after this operation's ``precommit`` ran (newest first).
``rollback``
    when the transaction rolled back (or the savepoint that scheduled it did).
``postcommit``
    after COMMIT succeeded; errors are logged and counted, never raised.

In ``revertprecommit``, ``rollback`` and ``postcommit``, every operation runs whatever another
raised: errors are logged on the ``hookbus`` logger; ``KeyboardInterrupt`` and ``SystemExit``
propagate once the phase has run; a ``CancelledError`` an operation raises while the scope's
task is not being cancelled is that operation's error.

Constructing an operation schedules nothing: ``tx.add(op)`` does. A method whose name is
close to a phase without being one (``post_commit``, ``preCommit``, ``on_commit``) is refused
when the class is defined: it would never run.

>>> class SendMail(Operation):
...     def __init__(self, to: str) -> None:
...         super().__init__()
...         self.to = to
...     async def postcommit(self) -> None:
...         ...  # the data is committed: now it is safe to tell the world
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, ClassVar, Final

__all__ = ["LateOperation", "Operation", "SingleLastOperation"]

# Where an operation runs in the precommit phase: with the others, after them, or last.
NORMAL: Final = 0
LATE: Final = 1
LAST: Final = 2
_PHASES: Final = ("precommit", "revertprecommit", "rollback", "postcommit")
# Names other frameworks give to these phases (compared without case nor underscores).
_ALIASES: Final = {
    "oncommit": "postcommit",
    "aftercommit": "postcommit",
    "beforecommit": "precommit",
    "onrollback": "rollback",
    "afterrollback": "rollback",
    "revert": "revertprecommit",
}


def _meant_phase(name: str) -> str | None:
    """The phase a method called ``name`` probably meant, if it is a misspelled one."""
    if name.startswith("_") or name in _PHASES:
        return None
    folded = name.lower().replace("_", "")
    if folded in _PHASES:
        return folded
    if folded in _ALIASES:
        return _ALIASES[folded]
    close = difflib.get_close_matches(folded, _PHASES, n=1, cutoff=0.85)
    return close[0] if close else None


class Operation:
    """Work scheduled in a transaction scope with ``tx.add(op)``.

    Subclass it and override the phases you need. An operation scheduled by
    ``tx.accumulate(key, value, factory)`` reads the accumulated values as ``self.values``
    (``None`` for an operation scheduled with ``tx.add``).
    """

    __slots__ = ("values",)

    _hookbus_phase: ClassVar[int] = NORMAL

    values: Any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for phase in _PHASES:
            method = cls.__dict__.get(phase)
            if method is not None and not inspect.iscoroutinefunction(method):
                raise TypeError(
                    f"{cls.__qualname__}.{phase} must be an async def: the scope awaits it"
                )
        for name, member in cls.__dict__.items():
            meant = _meant_phase(name) if callable(member) else None
            if meant is not None:
                # A misspelled phase would never run, in silence.
                raise TypeError(
                    f"{cls.__qualname__}.{name} is not a phase of an operation: did you mean "
                    f"{meant!r}? (the phases are {', '.join(_PHASES)})"
                )

    def __init__(self) -> None:
        self.values = None

    async def precommit(self) -> None:
        """Run before COMMIT. Raise to abort the transaction."""

    async def revertprecommit(self) -> None:
        """Undo what ``precommit`` did outside the database, when the transaction fails."""

    async def rollback(self) -> None:
        """Run after the transaction (or the savepoint that scheduled this) rolled back."""

    async def postcommit(self) -> None:
        """Run after COMMIT succeeded. Errors are logged and counted, never raised."""

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} at {id(self):#x}>"


class LateOperation(Operation):
    """An operation whose ``precommit`` runs after every ordinary operation's."""

    __slots__ = ()

    _hookbus_phase: ClassVar[int] = LATE


class SingleLastOperation(Operation):
    """An operation that runs last, once: scheduling one replaces a pending instance of the
    same class (one whose precommit has not started); an instance that ran keeps its place
    and gets its ``postcommit`` or ``rollback``, and the new one runs after it."""

    __slots__ = ()

    _hookbus_phase: ClassVar[int] = LAST
