"""hookbus: asyncio hooks and transactional operations for Python back ends.

Register coroutine hooks on declared events, dispatch them on an indexed hot path, and
schedule operations that run around the commit of the database transaction.
"""

from ._backend import Backend, CommitOutcome, MemoryBackend
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
    UnknownCategoryWarning,
    UnknownEventError,
    ValidationError,
)
from ._explain import ExplainedHook, Explanation, Verdict
from ._hooks import Hook, HookInfo
from ._migrations import (
    Batch,
    BatchedStage,
    Environment,
    Migration,
    MigrationError,
    Stage,
    StageContext,
    parse_version,
)
from ._operations import LateOperation, Operation, SingleLastOperation
from ._outcome import StatusOf, find_commit_outcome
from ._plugins import Plugin, PluginError, PluginHook, PluginSet
from ._savepoints import Savepoint
from ._selectors import (
    Selector,
    is_instance,
    match_key,
    match_rtype,
    match_rtype_sets,
    where,
)
from ._transaction import (
    Transaction,
    TransactionState,
    added_in_transaction,
    current_transaction,
    deleted_in_transaction,
    transaction,
    transaction_data,
)

__all__ = [
    "ALLOW_ALL",
    "Backend",
    "Batch",
    "BatchedStage",
    "Break",
    "Bus",
    "CommitOutcome",
    "CommitOutcomeUnknownError",
    "Control",
    "ControlMode",
    "DENY_ALL",
    "Edited",
    "EntityEvent",
    "Environment",
    "EventSpec",
    "ExplainedHook",
    "Explanation",
    "Hook",
    "HookInfo",
    "HookRecursionError",
    "HookbusError",
    "LateOperation",
    "LoadEvent",
    "MemoryBackend",
    "Migration",
    "MigrationError",
    "Operation",
    "Plugin",
    "PluginError",
    "PluginHook",
    "PluginSet",
    "QueryEvent",
    "ReadOnlyEdited",
    "RegistrationError",
    "RelationEvent",
    "Results",
    "Savepoint",
    "Selector",
    "ServerEvent",
    "SessionEvent",
    "SingleLastOperation",
    "Stage",
    "StageContext",
    "StatusOf",
    "Transaction",
    "TransactionAbortedError",
    "TransactionError",
    "TransactionState",
    "TransactionStateError",
    "UnknownCategoryWarning",
    "UnknownEventError",
    "ValidationError",
    "Verdict",
    "added_in_transaction",
    "current_control",
    "current_transaction",
    "deleted_in_transaction",
    "find_commit_outcome",
    "hooks_control",
    "is_instance",
    "match_key",
    "match_rtype",
    "match_rtype_sets",
    "parse_version",
    "transaction",
    "transaction_data",
    "where",
]
