"""Generic test fixtures: a PostgreSQL database per test module, and pools and connections on it.

Fixtures that need a bus are defined by the bus tests themselves.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

_ROOT = Path(__file__).resolve().parent.parent
# The adapters are importable on their own (as when installed): put their folder on the path.
for _path in (str(_ROOT / "adapters"), str(_ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import asyncpg  # noqa: E402
from _postgres import (  # noqa: E402
    create_database,
    drop_database,
    module_database_name,
    server_dsn,
    with_database,
)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The DSN of the PostgreSQL server the session uses (its administrative database)."""
    with server_dsn(tmp_path_factory.mktemp("pgserver")) as dsn:
        yield dsn


@pytest.fixture(scope="module")
def dsn(server: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """The DSN of a fresh database of this test module's own, dropped after the module."""
    name = module_database_name(request.module.__name__)
    asyncio.run(create_database(server, name))
    try:
        yield with_database(server, name)
    finally:
        asyncio.run(drop_database(server, name))


@pytest_asyncio.fixture
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool of up to 10 connections on the module's database."""
    async with asyncpg.create_pool(dsn, min_size=1, max_size=10) as pool:
        yield pool


@pytest_asyncio.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection on the module's database."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()
