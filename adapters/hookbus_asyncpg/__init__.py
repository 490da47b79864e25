"""hookbus over asyncpg: transaction scopes on pooled PostgreSQL connections.

>>> async def handler(pool: asyncpg.Pool) -> None:  # doctest: +SKIP
...     async with hookbus_asyncpg.transaction(pool, isolation="serializable") as tx:
...         await tx.connection.execute("INSERT INTO t VALUES (1)")
"""

from __future__ import annotations

from ._backend import AsyncpgBackend
from ._embedded import EmbeddedPostgres
from ._entity import Entity
from ._fenced_lock import FencedLock, LockHolder, LockLostError, LockTimeoutError
from ._installer import PluginManager, PluginStatus
from ._migration_lock import MigrationLock, MigrationLockTimeout
from ._migrator import Migrator, PlannedStage
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
    "FencedLock",
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
    "open_progress",
    "outbox_plugin",
    "transaction",
    "wire_type",
]
