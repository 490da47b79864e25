"""hookbus: asyncio hooks and transactional operations for Python back ends.

Register coroutine hooks on declared events, dispatch them on an indexed hot path, and
schedule operations that run around the commit of the database transaction.
"""

from ._bus import Bus, Results
from ._control import ALLOW_ALL, DENY_ALL, Control, ControlMode, current_control, hooks_control
from ._events import (
    Edited,
    EntityEvent,
    EventSpec,
    LoadEvent,
    QueryEvent,
    ReadOnlyEdited,
    RelationEvent,
    ServerEvent,
    SessionEvent,
)
from ._exceptions import (
    Break,
    CommitOutcomeUnknownError,
    HookbusError,
    HookRecursionError,
    RegistrationError,
    TransactionAbortedError,
    TransactionError,
    TransactionStateError,
    UnknownEventError,
    ValidationError,
)
from ._hooks import Hook, HookInfo
from ._selectors import (
    Selector,
    is_instance,
    match_key,
    match_rtype,
    match_rtype_sets,
    where,
)

__all__ = [
    "ALLOW_ALL",
    "Break",
    "Bus",
    "CommitOutcomeUnknownError",
    "Control",
    "ControlMode",
    "DENY_ALL",
    "Edited",
    "EntityEvent",
    "EventSpec",
    "Hook",
    "HookInfo",
    "HookRecursionError",
    "HookbusError",
    "LoadEvent",
    "QueryEvent",
    "ReadOnlyEdited",
    "RegistrationError",
    "RelationEvent",
    "Results",
    "Selector",
    "ServerEvent",
    "SessionEvent",
    "TransactionAbortedError",
    "TransactionError",
    "TransactionStateError",
    "UnknownEventError",
    "ValidationError",
    "current_control",
    "hooks_control",
    "is_instance",
    "match_key",
    "match_rtype",
    "match_rtype_sets",
    "where",
]
