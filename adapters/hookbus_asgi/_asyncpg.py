"""The default scope factory: ``hookbus_asyncpg.transaction(pool, ...)`` per request.

The only module of ``hookbus_asgi`` that imports asyncpg, and only when it is called: an
application on another backend never loads it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from ._types import PoolSource, ScopeFactory

if TYPE_CHECKING:
    import asyncpg

#: The isolation levels of ``hookbus_asyncpg.transaction()``.
Isolation: TypeAlias = Literal[
    "read_committed", "read_uncommitted", "repeatable_read", "serializable"
]

__all__ = ["Isolation", "asyncpg_transactions", "is_pool"]


def is_pool(value: object) -> bool:
    """Tell whether ``value`` is an ``asyncpg.Pool``, without importing asyncpg."""
    asyncpg = sys.modules.get("asyncpg")  # not loaded: nothing can be one of its pools
    return asyncpg is not None and isinstance(value, asyncpg.Pool)


def asyncpg_transactions(
    pool: PoolSource,
    *,
    isolation: Isolation | None = None,
    readonly: bool = False,
    deferrable: bool = False,
    recovery_pool: asyncpg.Pool | None = None,
    outcome_timeout: float = 5.0,
    find_outcome: bool = True,
) -> ScopeFactory:
    """A scope factory giving each request ``hookbus_asyncpg.transaction(pool, ...)``.

    ``pool`` is an ``asyncpg.Pool`` or a function returning it when a request comes (a pool
    opened in the lifespan: ``lambda: app.state.pool``). The options are those of
    ``hookbus_asyncpg.transaction()``, checked here, when the application is built, not at
    the first request::

        app.add_middleware(
            TransactionMiddleware,
            transaction=asyncpg_transactions(lambda: app.state.pool, isolation="serializable"),
        )
    """
    import hookbus_asyncpg

    if not is_pool(pool) and not callable(pool):
        raise TypeError(
            f"pool must be an asyncpg.Pool or a function returning it, not {type(pool).__name__}"
        )
    options: dict[str, Any] = {
        "isolation": isolation,
        "readonly": readonly,
        "deferrable": deferrable,
        "recovery_pool": recovery_pool,
        "outcome_timeout": outcome_timeout,
        "find_outcome": find_outcome,
    }
    hookbus_asyncpg.TransactionOptions(**options)  # refuses a bad option now
    if type(outcome_timeout) is int:
        options["outcome_timeout"] = float(outcome_timeout)  # the exact type transaction() caches
    begin = hookbus_asyncpg.transaction
    if is_pool(pool):
        return lambda: begin(pool, **options)

    def transaction() -> Any:
        source = pool()
        if not is_pool(source):
            raise TypeError(f"the pool source returned {source!r}, not an asyncpg.Pool")
        return begin(source, **options)

    return transaction
