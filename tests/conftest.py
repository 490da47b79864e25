"""Generic test fixtures: a PostgreSQL database per test module, and pools and connections on it.

Which PostgreSQL: ``HOOKBUS_TEST_DSN``, else ``HOOKBUS_DSN``, else the local server, else an
embedded one (the rule of ``hookbus_asyncpg.testing``, shared with the examples and the
benchmarks). The header of the run names the server. Fixtures that need a bus are defined by
the bus tests themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import pytest_asyncio
from hookbus_asyncpg.testing import (
    ENV,
    ServerChoice,
    ServerUnavailableError,
    choose_server,
    create_database,
    drop_database,
)

# The NATS fixtures (nats_url, nats_client, jetstream, stream), registered here once: a test
# module that imports _nats before declaring it as a plugin would keep pytest from rewriting
# its asserts.
pytest_plugins = ["_nats"]

# The suite's own variable comes first: it creates and force-drops a database per module, so
# that it can be pointed at another server than the one the demo and benchmarks use.
TEST_ENV = "HOOKBUS_TEST_DSN"
_CHOICE = pytest.StashKey[ServerChoice]()


def pytest_configure(config: pytest.Config) -> None:
    try:
        config.stash[_CHOICE] = choose_server((TEST_ENV, ENV))
    except ServerUnavailableError as error:
        raise pytest.UsageError(str(error)) from None


def pytest_report_header(config: pytest.Config) -> str:
    return f"PostgreSQL: {config.stash[_CHOICE].describe()}"


@pytest.fixture(scope="session")
def server(pytestconfig: pytest.Config) -> Iterator[str]:
    """The DSN of the PostgreSQL server the session uses (its administrative database)."""
    with pytestconfig.stash[_CHOICE].start() as dsn:
        yield dsn


@pytest.fixture(scope="module")
def dsn(server: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """The DSN of a fresh database of this test module's own, dropped after the module."""
    database = asyncio.run(create_database(server, request.module.__name__))
    try:
        yield database
    finally:
        asyncio.run(drop_database(server, database))


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
