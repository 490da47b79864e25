"""Exceptions raised by hookbus.

The hierarchy::

    HookbusError                      every error hookbus raises on its own account
    ├── RegistrationError             bad input at registration (declare, hook, hooks_control)
    │   └── UnknownEventError         an undeclared event name, with the closest declared ones
    ├── HookRecursionError            hooks that emit events re-entered the bus without end
    └── TransactionError              the transaction scope was used in a way it refuses
        ├── TransactionStateError     an illegal move of the scope's state machine
        ├── TransactionAbortedError   the server rolled back what the scope tried to commit
        └── CommitOutcomeUnknownError the connection was lost during COMMIT: outcome unknown

    ValidationError                   raised by application hooks: data refused, with messages
    Break                             raised by a hook to stop the remaining hooks of a dispatch

    UnknownCategoryWarning            a category named by hooks_control does nothing on a bus

``ValidationError`` and ``Break`` are not ``HookbusError``: they are raised by application
code, not by hookbus, and carry application data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, final

import msgspec

__all__ = [
    "Break",
    "CommitOutcomeUnknownError",
    "HookRecursionError",
    "HookbusError",
    "RegistrationError",
    "TransactionAbortedError",
    "TransactionError",
    "TransactionStateError",
    "UnknownCategoryWarning",
    "UnknownEventError",
    "ValidationError",
]


class HookbusError(Exception):
    """Base class of the errors hookbus raises on its own account."""


class RegistrationError(HookbusError, ValueError):
    """Bad input found at registration time: an event, a hook, a selector or a category."""


@final
class UnknownEventError(RegistrationError, LookupError):
    """An event name that was never declared. ``suggestions`` holds the closest declared names."""

    def __init__(self, name: str, suggestions: tuple[str, ...] = ()) -> None:
        self.name = name
        self.suggestions = suggestions
        hint = f"; did you mean {' or '.join(map(repr, suggestions))}?" if suggestions else ""
        super().__init__(f"unknown event {name!r}{hint} (declare it with bus.declare())")


@final
class HookRecursionError(HookbusError, RecursionError):
    """Hooks that emit events re-entered the bus until the interpreter's recursion limit.

    ``chain`` holds the events of the dispatches that were open, outermost first.
    """

    def __init__(self, chain: tuple[str, ...]) -> None:
        self.chain = chain
        super().__init__(self._message())

    def _message(self) -> str:
        runs: list[list[Any]] = []  # [event, count]: consecutive repeats folded
        for name in self.chain:
            if runs and runs[-1][0] == name:
                runs[-1][1] += 1
            else:
                runs.append([name, 1])
        shown = " -> ".join(name if n == 1 else f"{name} (x{n})" for name, n in runs)
        return f"hooks re-entered the bus {len(self.chain)} deep without end: {shown}"

    def extend(self, outer_event: str) -> HookRecursionError:
        """Return the same error with ``outer_event`` prepended to the chain."""
        self.chain = (outer_event, *self.chain)
        self.args = (self._message(),)
        return self


class TransactionError(HookbusError):
    """Base class of the errors about a transaction scope."""


class TransactionStateError(TransactionError, RuntimeError):
    """An illegal move of the transaction scope's state machine (commit twice, add after end)."""


class TransactionAbortedError(TransactionError):
    """The server rolled the transaction back instead of committing it.

    Raised when COMMIT is answered with ROLLBACK because a SQL error inside the scope was
    caught and swallowed: nothing of the transaction was written; the rollback operations ran.
    """


class CommitOutcomeUnknownError(TransactionError):
    """The connection was lost while COMMIT was in flight and the outcome could not be found.

    Neither postcommit nor rollback operations ran: hookbus does not know which is true.
    """


class ValidationError(Exception):
    """Data refused by a hook: ``errors`` maps a field (or ``None``) to a message.

    Raising it from a hook or an operation aborts the transaction. ``to_json()`` gives a body
    for a web API's error response.

    >>> ValidationError(42, {"age": "age must be between 0 and 120"}).to_json()
    b'{"eid":42,"errors":{"age":"age must be between 0 and 120"}}'
    """

    def __init__(self, eid: Any, errors: Mapping[str | None, str]) -> None:
        self.eid = eid
        self.errors = dict(errors)
        detail = "; ".join(f"{k}: {v}" if k else v for k, v in self.errors.items())
        super().__init__(detail if eid is None else f"entity {eid}: {detail}")

    def to_dict(self) -> dict[str, Any]:
        """Return the error as a JSON-ready mapping."""
        return {"eid": self.eid, "errors": self.errors}

    def to_json(self) -> bytes:
        """Return the error as JSON bytes."""
        return _json_encode(self.to_dict())


_json_encode = msgspec.json.Encoder().encode


class Break(Exception):  # a control-flow signal, named as users read it
    """Raised by a hook to stop the remaining hooks of this dispatch.

    ``emit`` returns the ``Break`` to the emitter; ``collect`` puts it on ``results.broken``.
    On a ``before_*`` event of the store it cancels the action.
    """

    def __init__(self, value: Any = None) -> None:
        self.value = value
        super().__init__(value)


class UnknownCategoryWarning(UserWarning):
    """A category named by ``hooks_control`` that does nothing on the bus dispatching.

    Categories are free names, so this is a warning, given once per name and bus: the name
    is no category of the bus's hooks (a typo, most often: the message names the closest
    ones), or a protected category named in ``ALLOW_ALL``, which stays enabled.
    """
