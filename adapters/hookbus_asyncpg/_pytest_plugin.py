"""The database fixtures of hookbus, a pytest plugin loaded through the ``pytest11`` entry
point ``hookbus_asyncpg`` (``-p no:hookbus_asyncpg`` disables it; the core's plugin,
``hookbus``, keeps the fixtures that need no database).

Fixtures:

``hookbus_dsn``
    the database the fixtures use (session scope): ``HOOKBUS_TEST_DSN``, else
    ``HOOKBUS_DSN``, else the ``hookbus_dsn`` ini option, taken as they are (the database must
    hold your tables); with none of them (or ``embedded``), a throwaway database on the local
    server if it answers, else on an embedded one, dropped after the session: the rule of
    ``hookbus_asyncpg.testing``. Override the fixture to choose it yourself.
``hookbus_pool``
    an asyncpg pool on ``hookbus_dsn``, for the test.
``hookbus_db``
    test mode: a transaction rolled back after the test, in which the scopes opened on
    ``hookbus_pool`` run their whole lifecycle, postcommit included, on savepoints. A
    postcommit that raises fails the test.
``hookbus_scope``
    a scope factory on ``hookbus_db``: ``async with hookbus_scope() as tx:``, for code (a
    web app) that takes a function opening its scopes rather than a pool.

The async fixtures need pytest-asyncio (strict or auto mode).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, TypeVar, cast

import asyncpg
import pytest

from ._transaction._rollback_mode import RolledBackDatabase, rolled_back
from ._transaction._transaction import AsyncpgTransaction, transaction
from .testing import (
    EMBEDDED,
    ServerUnavailableError,
    choose_server,
    create_database,
    drop_database,
)

__all__ = [
    "hookbus_db",
    "hookbus_dsn",
    "hookbus_pool",
    "hookbus_scope",
    "pytest_addoption",
    "pytest_configure",
    "pytest_runtest_call",
]

#: The variables that name the test database, first one set wins.
DSN_VARIABLES: Final = ("HOOKBUS_TEST_DSN", "HOOKBUS_DSN")
_DB_FIXTURE: Final = "hookbus_db"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "hookbus_dsn",
        "PostgreSQL URL for hookbus's database fixtures "
        "(the variables HOOKBUS_TEST_DSN and HOOKBUS_DSN come first)",
        default="",
    )


_DISABLED: Final = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Until the next release, ``-p no:hookbus`` still disables the database fixtures (they
    were part of the ``hookbus`` plugin), with a warning saying how to keep that."""
    manager = config.pluginmanager
    if manager.is_blocked("hookbus"):
        message = (
            "hookbus's database fixtures (hookbus_dsn, hookbus_pool, hookbus_db) moved to the "
            "pytest plugin 'hookbus_asyncpg': '-p no:hookbus' disables them until the next "
            "release only; add '-p no:hookbus_asyncpg' to keep them disabled"
        )
        config.stash[_DISABLED] = message
        config.issue_config_time_warning(DeprecationWarning(message), stacklevel=2)


@pytest.fixture(scope="session")
def hookbus_dsn(pytestconfig: pytest.Config) -> Iterator[str]:
    """The PostgreSQL URL of the database fixtures (see the module)."""
    disabled = pytestconfig.stash.get(_DISABLED, None)
    if disabled is not None:
        pytest.fail(disabled, pytrace=False)
    for name in DSN_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value and value != EMBEDDED:
            yield value
            return
    value = str(pytestconfig.getini("hookbus_dsn")).strip()
    if value:
        yield value
        return
    try:
        choice = choose_server(DSN_VARIABLES)
    except ServerUnavailableError as error:
        raise pytest.UsageError(
            f"hookbus's database fixtures: {error}; or set HOOKBUS_TEST_DSN (or HOOKBUS_DSN), "
            "or `hookbus_dsn = postgresql://...` in the pytest configuration, or override the "
            "`hookbus_dsn` fixture"
        ) from None
    with choice.start() as server:
        database = _in_thread(create_database(server, "hookbus_tests"))
        try:
            yield database
        finally:
            _in_thread(drop_database(server, database))


def _in_thread(coro: Any) -> Any:
    """Run ``coro`` to its end in a loop of its own (a test's loop may be running here)."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coro).result()


# Without pytest-asyncio, pytest itself refuses the async fixtures, saying that a plugin is
# needed to run them.
_decorator: Any
try:
    from pytest_asyncio import fixture as _decorator
except ImportError:
    _decorator = pytest.fixture

_F = TypeVar("_F", bound=Callable[..., Any])


def _async_fixture(fn: _F) -> _F:
    return cast(_F, _decorator(fn))


@_async_fixture
async def hookbus_pool(hookbus_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool of up to 4 connections on ``hookbus_dsn``, for one test.

    For a pool shared by the whole session, override it with
    ``@pytest_asyncio.fixture(scope="session", loop_scope="session")`` and run the tests
    in the session's loop (see docs/testing.md).
    """
    async with asyncpg.create_pool(hookbus_dsn, min_size=1, max_size=4) as pool:
        yield pool


@_async_fixture
async def hookbus_db(hookbus_pool: asyncpg.Pool) -> AsyncIterator[RolledBackDatabase]:
    """Test mode: the test runs in a transaction rolled back at its end.

    Scopes opened on ``hookbus_db.pool`` (the ``hookbus_pool``) or on
    ``hookbus_db.connection`` run on savepoints of that transaction, with their whole
    lifecycle: precommit, "COMMIT" (a RELEASE, deferred constraints checked), postcommit.
    A postcommit that raises fails the test (take expected ones with
    ``hookbus_db.take_postcommit_errors()``). Create tables inside the test with
    ``store.create_tables(hookbus_db.connection)``: on the pool they would be committed.
    """
    _check_loop(hookbus_pool)
    async with rolled_back(hookbus_pool) as database:
        yield database
    _fail_on_postcommit_errors(database, "after the test")


@pytest.fixture
def hookbus_scope(
    hookbus_db: RolledBackDatabase,
) -> Callable[[], AbstractAsyncContextManager[AsyncpgTransaction]]:
    """A scope factory on the test's database: each call opens a scope on ``hookbus_db.pool``,
    which runs on a savepoint of the test's transaction (see ``hookbus_db``). Hand it to
    code that takes a function opening its scopes (a web app's per-request scope).
    """
    pool = hookbus_db.pool

    def open_scope() -> AbstractAsyncContextManager[AsyncpgTransaction]:
        return transaction(pool)

    return open_scope


def _check_loop(pool: asyncpg.Pool) -> None:
    """Refuse a pool of another event loop with the settings that fix it, not asyncpg's
    "Future attached to a different loop" halfway through the test."""
    loop = getattr(pool, "_loop", None)  # asyncpg's; the check is skipped if it goes
    if loop is not None and loop is not asyncio.get_running_loop():
        raise pytest.UsageError(
            "hookbus_pool was made in another event loop than the one running this test: a "
            "pool shared by several tests needs them in its loop; for a session-wide pool "
            "(loop_scope='session') set asyncio_default_fixture_loop_scope = session and "
            "asyncio_default_test_loop_scope = session (see docs/testing.md)"
        )


def _fail_on_postcommit_errors(database: RolledBackDatabase, when: str) -> None:
    errors = database.take_postcommit_errors()
    if errors:
        raise ExceptionGroup(
            f"{len(errors)} postcommit operation(s) raised {when}: in production they are "
            "logged and the caller carries on; under hookbus_db they fail the test (take "
            "the ones you expect with hookbus_db.take_postcommit_errors())",
            [error if isinstance(error, Exception) else RuntimeError(error) for error in errors],
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Fail a test that used ``hookbus_db`` if a postcommit raised during it."""
    result = yield
    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    database = funcargs.get(_DB_FIXTURE)
    if database is not None:
        _fail_on_postcommit_errors(database, "during the test")
    return result
