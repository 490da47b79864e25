"""ASGI type aliases, structural so that any framework's own ASGI types fit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, Literal, TypeAlias, get_args

import asyncpg

__all__ = [
    "ASGIApp",
    "Isolation",
    "Message",
    "PoolSource",
    "Receive",
    "Scope",
    "Send",
    "check_pool_source",
    "resolve_pool",
    "scope_options",
]

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


def check_pool_source(source: object) -> None:
    """Refuse, when the application is built, what is neither a pool nor a function."""
    if not isinstance(source, asyncpg.Pool) and not callable(source):
        raise TypeError(
            f"pool must be an asyncpg.Pool or a function returning it, not {type(source).__name__}"
        )


def resolve_pool(source: PoolSource) -> asyncpg.Pool:
    """The pool of ``source``: itself, or what the function returns."""
    if isinstance(source, asyncpg.Pool):
        return source
    pool = source()
    if not isinstance(pool, asyncpg.Pool):
        raise TypeError(f"the pool source returned {pool!r}, not an asyncpg.Pool")
    return pool


_ISOLATIONS: Final = frozenset(get_args(Isolation))


def scope_options(isolation: str | None, readonly: bool, deferrable: bool) -> dict[str, Any]:
    """The options of ``hookbus_asyncpg.transaction()``, refused now if wrong, not per request."""
    if isolation is not None and isolation not in _ISOLATIONS:
        raise ValueError(f"isolation must be one of {sorted(_ISOLATIONS)}, not {isolation!r}")
    return {"isolation": isolation, "readonly": bool(readonly), "deferrable": bool(deferrable)}
