"""hookbus over asyncpg: transaction scopes on pooled PostgreSQL connections.

>>> async def handler(pool: asyncpg.Pool) -> None:  # doctest: +SKIP
...     async with hookbus_asyncpg.transaction(pool, isolation="serializable") as tx:
...         await tx.connection.execute("INSERT INTO t VALUES (1)")
"""

from __future__ import annotations

from ._backend import AsyncpgBackend
from ._embedded import EmbeddedPostgres
from ._entity import Entity
from ._options import TransactionOptions
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
    "EntityType",
    "RelationType",
    "Schema",
    "SchemaMismatchError",
    "Store",
    "TransactionOptions",
    "UnknownNameError",
    "transaction",
]
