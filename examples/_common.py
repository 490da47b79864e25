"""What every example shares: a PostgreSQL to run on, and a database of its own there.

The server is the one named by ``HOOKBUS_DSN``; when it is unset, an embedded PostgreSQL
(the ``pgserver`` package) is started for the run and removed after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from hookbus_asyncpg import EmbeddedPostgres

Example = Callable[[asyncpg.Pool], Awaitable[None]]


@contextlib.contextmanager
def server() -> Iterator[str]:
    """The DSN of the server to use: ``HOOKBUS_DSN``, else an embedded one for the block."""
    dsn = os.environ.get("HOOKBUS_DSN")
    if dsn:
        yield dsn
        return
    print("HOOKBUS_DSN is unset: starting an embedded PostgreSQL for this run")
    with EmbeddedPostgres() as embedded:
        yield embedded.dsn


@contextlib.asynccontextmanager
async def database(server_dsn: str, name: str) -> AsyncIterator[asyncpg.Pool]:
    """A fresh database for one example, on ``server_dsn``; dropped on exit."""
    db = f"hookbus_{name}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{db}"')
        try:
            url = urlunsplit(urlsplit(server_dsn)._replace(path="/" + db))
            async with asyncpg.create_pool(url, min_size=1, max_size=4) as pool:
                yield pool
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    finally:
        await admin.close()


def run(example: Example, name: str) -> None:
    """Run one example as a program: ``python examples/NAME.py``."""

    async def main(dsn: str) -> None:
        async with database(dsn, name) as pool:
            await example(pool)

    with server() as dsn:
        asyncio.run(main(dsn))
