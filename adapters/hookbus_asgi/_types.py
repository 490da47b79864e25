"""ASGI type aliases, structural so that any framework's own ASGI types fit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal, TypeAlias

import asyncpg

__all__ = ["ASGIApp", "Isolation", "Message", "PoolSource", "Receive", "Scope", "Send"]

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The isolation levels of ``hookbus_asyncpg.transaction()``.
Isolation: TypeAlias = Literal[
    "read_committed", "read_uncommitted", "repeatable_read", "serializable"
]

#: A pool, or a function returning it when a request comes (a pool made in the lifespan).
PoolSource: TypeAlias = "asyncpg.Pool | Callable[[], asyncpg.Pool]"


def resolve_pool(source: PoolSource) -> asyncpg.Pool:
    """The pool of ``source``: itself, or what the function returns."""
    if isinstance(source, asyncpg.Pool):
        return source
    pool = source()
    if not isinstance(pool, asyncpg.Pool):
        raise TypeError(f"the pool source returned {pool!r}, not an asyncpg.Pool")
    return pool
