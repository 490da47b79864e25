"""``tx.connection`` before the scope has begun: the first statement takes the connection.

A scope begins lazily (``hookbus.Transaction.begin``): until its first statement, it holds no
connection and has sent nothing. Until then ``tx.connection`` is a ``LazyConnection``: its
statement methods (``execute``, ``fetch``, ``copy_records_to_table``...) begin the scope (a
connection from the pool, then BEGIN) and run on the connection it took; from then on
``tx.connection`` is that connection itself, and this object forwards to it. What cannot wait
for a connection (``get_server_pid()``, ``is_in_transaction()``...) is refused before the
first statement, with the way out: ``conn = await tx.connect()`` gives the connection at once.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, final

import asyncpg

from hookbus import TransactionStateError

if TYPE_CHECKING:
    from ._transaction import AsyncpgTransaction

__all__ = ["LazyConnection", "gone"]

# asyncpg's coroutine methods that take no connection of their own accord.
_NOT_BEGINNING: Final = frozenset({"close", "reset"})


@final
class LazyConnection:
    """The connection of a scope that has not begun yet (see the module docstring)."""

    __slots__ = ("_tx",)

    def __init__(self, tx: AsyncpgTransaction) -> None:
        self._tx = tx

    def __repr__(self) -> str:
        return f"<LazyConnection of {self._tx!r}>"

    async def _connection(self) -> Any:
        return await self._tx.connect()

    async def _first(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The statement that begins the scope: take the connection, then run it there."""
        tx = self._tx
        await tx.begin()  # tx.connect(), inlined: one coroutine less around the first statement
        conn = tx.backend_connection
        if conn is None:
            raise gone(tx, f"tx.connection.{name}")
        return await getattr(conn, name)(*args, **kwargs)

    # The statement methods, written out: they are the common first use of a scope. Once the
    # scope has begun they hand back the connection's own call (no coroutine of their own):
    # code that took ``tx.connection`` before the first statement pays one test a statement.

    def execute(self, query: str, *args: Any, timeout: float | None = None) -> Awaitable[str]:
        """``Connection.execute``, after the scope has begun."""
        tx = self._tx
        conn: Any = tx.backend_connection
        if conn is not None:
            return conn.execute(query, *args, timeout=timeout)  # type: ignore[no-any-return]
        return self._first("execute", (query, *args), {"timeout": timeout})

    def fetch(self, query: str, *args: Any, **kwargs: Any) -> Awaitable[list[Any]]:
        """``Connection.fetch``, after the scope has begun."""
        tx = self._tx
        conn: Any = tx.backend_connection
        if conn is not None:
            return conn.fetch(query, *args, **kwargs)  # type: ignore[no-any-return]
        return self._first("fetch", (query, *args), kwargs)

    def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """``Connection.fetchrow``, after the scope has begun."""
        tx = self._tx
        conn: Any = tx.backend_connection
        if conn is not None:
            return conn.fetchrow(query, *args, **kwargs)  # type: ignore[no-any-return]
        return self._first("fetchrow", (query, *args), kwargs)

    def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """``Connection.fetchval``, after the scope has begun."""
        tx = self._tx
        conn: Any = tx.backend_connection
        if conn is not None:
            return conn.fetchval(query, *args, **kwargs)  # type: ignore[no-any-return]
        return self._first("fetchval", (query, *args), kwargs)

    def executemany(self, command: str, args: Any, **kwargs: Any) -> Awaitable[None]:
        """``Connection.executemany``, after the scope has begun."""
        tx = self._tx
        conn: Any = tx.backend_connection
        if conn is not None:
            return conn.executemany(command, args, **kwargs)  # type: ignore[no-any-return]
        return self._first("executemany", (command, args), kwargs)

    def __getattr__(self, name: str) -> Any:
        backend_connection = self._tx.backend_connection
        if backend_connection is not None:
            return getattr(backend_connection, name)
        attribute = getattr(asyncpg.Connection, name)  # AttributeError for what is not there
        tx = self._tx
        if tx.begun:
            raise gone(tx, f"tx.connection.{name}")
        if inspect.iscoroutinefunction(attribute) and name not in _NOT_BEGINNING:
            return _beginning(self, name)
        raise TransactionStateError(
            f"tx.connection.{name} needs the scope's connection, and the scope has not begun "
            "yet (it takes its connection at its first statement): use "
            "`conn = await tx.connect()`, which begins it and returns the connection"
        )


def gone(tx: AsyncpgTransaction, what: str) -> TransactionStateError:
    """The refusal of a statement sent through ``tx.connection`` once the scope has given its
    connection back (a task that outlived its scope, a postcommit)."""
    return TransactionStateError(
        f"cannot use {what}: the transaction scope is {tx.state.value}, and "
        "its connection went back to the pool when its transaction ended (before "
        "postcommit): use a connection of your own (`async with pool.acquire() as conn:`) "
        "or a new scope"
    )


def _beginning(lazy: LazyConnection, name: str) -> Callable[..., Awaitable[Any]]:
    async def method(*args: Any, **kwargs: Any) -> Any:
        conn = await lazy._connection()
        return await getattr(conn, name)(*args, **kwargs)

    method.__name__ = name
    return method
