"""hookbus over asyncpg: transaction scopes on pooled PostgreSQL connections.

>>> async def handler(pool: asyncpg.Pool) -> None:  # doctest: +SKIP
...     async with hookbus_asyncpg.transaction(pool, isolation="serializable") as tx:
...         await tx.connection.execute("INSERT INTO t VALUES (1)")

Every public name is imported on first use (PEP 562): ``import hookbus_asyncpg`` (and the
``hookbus`` command's ``--help``, which imports this package's command objects) loads no
driver; ``from hookbus_asyncpg import transaction`` imports what ``transaction`` needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ._backend import AsyncpgBackend
    from ._embedded import EmbeddedPostgres
    from ._entity import Entity
    from ._fenced_lock import FencedLock, LockHolder, LockLostError, LockTimeoutError
    from ._hook_runs import ErrorRecord, HookRun
    from ._installer import PluginManager, PluginStatus
    from ._lazy import LazyConnection
    from ._migration_lock import MigrationLock, MigrationLockTimeout
    from ._migrator import Migrator, PlannedStage, decide
    from ._options import TransactionOptions
    from ._outbox import Outbox
    from ._outbox_table import OUTBOX_CHANNEL, outbox_plugin
    from ._outbox_wire import WIRE_VERSION, EntityMessage, RelationMessage, wire_type
    from ._plugin_state import PluginState, PluginStateError
    from ._progress import StageProgress
    from ._progress_bar import Progress, open_progress
    from ._schema import (
        Attribute,
        EntityType,
        RelationType,
        Schema,
        SchemaMismatchError,
        UnknownNameError,
    )
    from ._store import Store
    from ._transaction import AsyncpgTransaction, transaction

__all__ = [
    "AsyncpgBackend",
    "AsyncpgTransaction",
    "Attribute",
    "EmbeddedPostgres",
    "Entity",
    "EntityMessage",
    "EntityType",
    "ErrorRecord",
    "FencedLock",
    "HookRun",
    "LazyConnection",
    "LockHolder",
    "LockLostError",
    "LockTimeoutError",
    "MigrationLock",
    "MigrationLockTimeout",
    "Migrator",
    "OUTBOX_CHANNEL",
    "Outbox",
    "PlannedStage",
    "PluginManager",
    "PluginState",
    "PluginStateError",
    "PluginStatus",
    "Progress",
    "RelationMessage",
    "RelationType",
    "Schema",
    "SchemaMismatchError",
    "StageProgress",
    "Store",
    "TransactionOptions",
    "UnknownNameError",
    "WIRE_VERSION",
    "decide",
    "open_progress",
    "outbox_plugin",
    "transaction",
    "wire_type",
]

# Where each public name is defined (the imports above, for type checkers, say the same).
_DEFINED_IN: Final = {
    "AsyncpgBackend": "._backend",
    "AsyncpgTransaction": "._transaction",
    "Attribute": "._schema",
    "EmbeddedPostgres": "._embedded",
    "Entity": "._entity",
    "EntityMessage": "._outbox_wire",
    "EntityType": "._schema",
    "ErrorRecord": "._hook_runs",
    "FencedLock": "._fenced_lock",
    "HookRun": "._hook_runs",
    "LazyConnection": "._lazy",
    "LockHolder": "._fenced_lock",
    "LockLostError": "._fenced_lock",
    "LockTimeoutError": "._fenced_lock",
    "MigrationLock": "._migration_lock",
    "MigrationLockTimeout": "._migration_lock",
    "Migrator": "._migrator",
    "OUTBOX_CHANNEL": "._outbox_table",
    "Outbox": "._outbox",
    "PlannedStage": "._migrator",
    "PluginManager": "._installer",
    "PluginState": "._plugin_state",
    "PluginStateError": "._plugin_state",
    "PluginStatus": "._installer",
    "Progress": "._progress_bar",
    "RelationMessage": "._outbox_wire",
    "RelationType": "._schema",
    "Schema": "._schema",
    "SchemaMismatchError": "._schema",
    "StageProgress": "._progress",
    "Store": "._store",
    "TransactionOptions": "._options",
    "UnknownNameError": "._schema",
    "WIRE_VERSION": "._outbox_wire",
    "decide": "._migrator",
    "open_progress": "._progress_bar",
    "outbox_plugin": "._outbox_table",
    "transaction": "._transaction",
    "wire_type": "._outbox_wire",
}

if not TYPE_CHECKING:  # a type checker sees the imports, and no catch-all attribute

    def __getattr__(name: str) -> Any:
        """Import the public ``name`` on its first use, and keep it."""
        try:
            module = _DEFINED_IN[name]
        except KeyError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
