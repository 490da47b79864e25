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
    from ._outbox._outbox import Outbox
    from ._outbox._outbox_table import OUTBOX_CHANNEL, outbox_plugin
    from ._outbox._outbox_wire import WIRE_VERSION, EntityMessage, RelationMessage, wire_type
    from ._plugins._fenced_lock import FencedLock, LockHolder, LockLostError, LockTimeoutError
    from ._plugins._hook_runs import ErrorRecord, HookRun
    from ._plugins._installer import PluginManager, PluginStatus
    from ._plugins._migration_lock import MigrationLock, MigrationLockTimeout
    from ._plugins._migrator import Migrator, PlannedStage, decide
    from ._plugins._plugin_state import PluginState, PluginStateError
    from ._plugins._progress_bar import Progress, open_progress
    from ._plugins._stage_records import StageProgress
    from ._servers._embedded import EmbeddedPostgres
    from ._store._entity import Entity
    from ._store._schema import (
        Attribute,
        EntityType,
        RelationType,
        Schema,
        SchemaMismatchError,
        UnknownNameError,
    )
    from ._store._store import Store
    from ._transaction._backend import AsyncpgBackend
    from ._transaction._lazy import LazyConnection
    from ._transaction._options import TransactionOptions
    from ._transaction._transaction import AsyncpgTransaction, transaction

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
    "AsyncpgBackend": "._transaction._backend",
    "AsyncpgTransaction": "._transaction._transaction",
    "Attribute": "._store._schema",
    "EmbeddedPostgres": "._servers._embedded",
    "Entity": "._store._entity",
    "EntityMessage": "._outbox._outbox_wire",
    "EntityType": "._store._schema",
    "ErrorRecord": "._plugins._hook_runs",
    "FencedLock": "._plugins._fenced_lock",
    "HookRun": "._plugins._hook_runs",
    "LazyConnection": "._transaction._lazy",
    "LockHolder": "._plugins._fenced_lock",
    "LockLostError": "._plugins._fenced_lock",
    "LockTimeoutError": "._plugins._fenced_lock",
    "MigrationLock": "._plugins._migration_lock",
    "MigrationLockTimeout": "._plugins._migration_lock",
    "Migrator": "._plugins._migrator",
    "OUTBOX_CHANNEL": "._outbox._outbox_table",
    "Outbox": "._outbox._outbox",
    "PlannedStage": "._plugins._migrator",
    "PluginManager": "._plugins._installer",
    "PluginState": "._plugins._plugin_state",
    "PluginStateError": "._plugins._plugin_state",
    "PluginStatus": "._plugins._installer",
    "Progress": "._plugins._progress_bar",
    "RelationMessage": "._outbox._outbox_wire",
    "RelationType": "._store._schema",
    "Schema": "._store._schema",
    "SchemaMismatchError": "._store._schema",
    "StageProgress": "._plugins._stage_records",
    "Store": "._store._store",
    "TransactionOptions": "._transaction._options",
    "UnknownNameError": "._store._schema",
    "WIRE_VERSION": "._outbox._outbox_wire",
    "decide": "._plugins._migrator",
    "open_progress": "._plugins._progress_bar",
    "outbox_plugin": "._outbox._outbox_table",
    "transaction": "._transaction._transaction",
    "wire_type": "._outbox._outbox_wire",
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
