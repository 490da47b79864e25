"""ASGI type aliases, structural so that any framework's own ASGI types fit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeAlias

from hookbus import Transaction

if TYPE_CHECKING:
    import asyncpg

__all__ = [
    "ASGIApp",
    "Message",
    "PoolSource",
    "Receive",
    "Scope",
    "ScopeFactory",
    "Send",
]

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

#: What opens a request's scope: called once per request, it returns an async context
#: manager that yields a ``hookbus.Transaction`` (``lambda: hookbus_asyncpg.transaction(pool)``).
ScopeFactory: TypeAlias = Callable[[], AbstractAsyncContextManager[Transaction]]

#: An asyncpg pool, or a function returning it: what ``asyncpg_transactions`` takes (and,
#: deprecated, what the middleware, the dependency and the plugin took before a factory).
PoolSource: TypeAlias = "asyncpg.Pool | Callable[[], asyncpg.Pool]"
