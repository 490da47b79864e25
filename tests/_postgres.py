"""The PostgreSQL the tests run against: the one named by HOOKBUS_TEST_DSN, else an embedded one.

The default is the local server (``postgresql://postgres@127.0.0.1:5432/test``); if nothing
answers there, the embedded server of ``pgserver`` is started once for the test session.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from hookbus_asyncpg import EmbeddedPostgres

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


async def _answers(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@contextmanager
def server_dsn(embedded_root: Path) -> Iterator[str]:
    """Give the DSN of a PostgreSQL that answers, starting the embedded one if none does."""
    dsn = os.environ.get("HOOKBUS_TEST_DSN", DEFAULT_DSN)
    if asyncio.run(_answers(dsn)):
        yield dsn
        return
    with EmbeddedPostgres(embedded_root) as server:
        yield server.dsn


def with_database(dsn: str, database: str) -> str:
    """Return ``dsn`` pointing at ``database``."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


def module_database_name(module: str) -> str:
    """A fresh database name for a test module: ``hookbus_<module>_<random>``."""
    short = "".join(c if c.isalnum() else "_" for c in module.rsplit(".", 1)[-1].lower())
    return f"hookbus_{short[:30]}_{secrets.token_hex(4)}"


async def create_database(dsn: str, name: str) -> None:
    """Create the database ``name`` on the server of ``dsn``."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(dsn: str, name: str) -> None:
    """Drop the database ``name``, closing the connections still on it."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
