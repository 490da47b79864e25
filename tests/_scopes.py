"""One suite over both backends, for the tests that guard the scope (issue 14).

``open_scopes(request)`` gives a ``Scopes`` for the backend named by ``request.param``:
``"memory"`` (``hookbus.transaction()`` on a ``MemoryBackend``) or ``"asyncpg"``
(``hookbus_asyncpg.transaction(pool)`` on a real PostgreSQL table ``items``). Only the public
API is used, so that the tests hold whatever the scope does inside. Each test module defines
the two fixtures (pytest finds fixtures in conftest.py or the module itself)::

    @pytest_asyncio.fixture
    async def items(pool):          # the pool, on an empty table; left intact
        await pool.execute(SCHEMA)
        yield pool
        await assert_pool_hands_out_everything(pool)

    @pytest.fixture(params=["memory", "asyncpg"])
    def scopes(request):
        return open_scopes(request)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import asyncpg
import hookbus_asyncpg
import pytest

import hookbus

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY);
TRUNCATE items;
"""


class Scopes(Protocol):
    """What a test needs of a backend."""

    name: str

    def transaction(self) -> AbstractAsyncContextManager[hookbus.Transaction]:
        """A new scope, to enter with ``async with``."""
        ...

    def nested(self, tx: hookbus.Transaction) -> AbstractAsyncContextManager[object]:
        """A savepoint of ``tx`` as users write it on this backend (asyncpg: a nested
        ``transaction(pool)``, which joins the open scope)."""
        ...

    async def write(self, tx: hookbus.Transaction, row: int) -> None:
        """Send a statement in ``tx`` that writes ``row`` (memory: a savepoint, released)."""
        ...

    async def rows(self) -> list[int] | None:
        """The rows committed, sorted (``None`` on the memory backend: it has no table)."""
        ...


class MemoryScopes:
    name = "memory"

    def transaction(self) -> hookbus.Transaction:
        return hookbus.transaction(hookbus.MemoryBackend())

    def nested(self, tx: hookbus.Transaction) -> AbstractAsyncContextManager[object]:
        return tx.savepoint()

    async def write(self, tx: hookbus.Transaction, row: int) -> None:
        # The memory backend has no statement of its own: a savepoint is the one it records.
        async with tx.savepoint():
            pass

    async def rows(self) -> None:
        return None


class AsyncpgScopes:
    name = "asyncpg"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    def transaction(self) -> AbstractAsyncContextManager[hookbus.Transaction]:
        return hookbus_asyncpg.transaction(self.pool)

    @contextlib.asynccontextmanager
    async def nested(self, tx: hookbus.Transaction) -> AsyncIterator[object]:
        async with hookbus_asyncpg.transaction(self.pool) as joined:
            assert joined is tx  # it joined the open scope
            yield joined

    async def write(self, tx: hookbus.Transaction, row: int) -> None:
        await connection(tx).execute("INSERT INTO items VALUES ($1)", row)

    async def rows(self) -> list[int]:
        return [r[0] for r in await self.pool.fetch("SELECT id FROM items ORDER BY id")]


def connection(tx: hookbus.Transaction) -> asyncpg.Connection:
    """The connection of an asyncpg scope."""
    assert isinstance(tx, hookbus_asyncpg.AsyncpgTransaction)
    return tx.connection


def statements(tx: hookbus.Transaction) -> list[str]:
    """What the memory backend of ``tx`` recorded."""
    assert isinstance(tx.backend, hookbus.MemoryBackend)
    return tx.backend.statements


def open_scopes(request: pytest.FixtureRequest) -> Scopes:
    """The ``Scopes`` of ``request.param``; on asyncpg, the pool of the test module's fixture
    ``items`` (which runs ``SCHEMA``)."""
    if request.param == "memory":
        return MemoryScopes()
    return AsyncpgScopes(request.getfixturevalue("items"))
