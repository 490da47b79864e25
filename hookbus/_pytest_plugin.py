"""The pytest plugin of hookbus, loaded through the ``pytest11`` entry point.

Fixtures:

``hookbus_recorder``
    a factory: ``events = hookbus_recorder(bus)`` records what ``bus`` emits until the end
    of the test (``hookbus.testing.EventRecorder``).
``hookbus_capture``
    ``hookbus.testing.capture_operations`` (an async context manager).
``hookbus_dsn``
    the PostgreSQL the database fixtures use: ``HOOKBUS_TEST_DSN``, else ``HOOKBUS_DSN``,
    else the ``hookbus_dsn`` ini option. Override the fixture to choose it yourself.
``hookbus_pool``
    an asyncpg pool on ``hookbus_dsn``, for the test.
``hookbus_db``
    test mode: a transaction rolled back after the test, in which the scopes opened on
    ``hookbus_pool`` run their whole lifecycle, postcommit included, on savepoints. A
    postcommit that raises fails the test.

Importing this module imports neither asyncpg nor the adapter: the database fixtures load
them when a test uses them. The async fixtures need pytest-asyncio (strict or auto mode).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import pytest

from ._bus import Bus
from .testing import EventRecorder, capture_operations

if TYPE_CHECKING:
    import asyncpg
    from hookbus_asyncpg._rollback_mode import RolledBackDatabase

__all__ = [
    "hookbus_capture",
    "hookbus_db",
    "hookbus_dsn",
    "hookbus_pool",
    "hookbus_recorder",
    "pytest_addoption",
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


@pytest.fixture
def hookbus_recorder() -> Iterator[Callable[[Bus], EventRecorder]]:
    """A factory: ``events = hookbus_recorder(bus)`` records ``bus`` until the test ends."""
    recorders: list[EventRecorder] = []

    def record(bus: Bus) -> EventRecorder:
        recorder = EventRecorder(bus)
        recorder.start()
        recorders.append(recorder)
        return recorder

    yield record
    for recorder in reversed(recorders):
        recorder.stop()


@pytest.fixture
def hookbus_capture() -> Callable[..., Any]:
    """``hookbus.testing.capture_operations``: ``async with hookbus_capture(execute=True):``."""
    return capture_operations


@pytest.fixture(scope="session")
def hookbus_dsn(pytestconfig: pytest.Config) -> str:
    """The PostgreSQL URL of the database fixtures.

    ``HOOKBUS_TEST_DSN``, else ``HOOKBUS_DSN``, else the ``hookbus_dsn`` ini option; the
    database must hold the application's tables. Override this fixture to create one.
    """
    for name in DSN_VARIABLES:
        value = os.environ.get(name)
        if value and value != "embedded":
            return value
    value = str(pytestconfig.getini("hookbus_dsn"))
    if value:
        return value
    raise pytest.UsageError(
        "hookbus's database fixtures need a PostgreSQL URL: set HOOKBUS_TEST_DSN (or "
        "HOOKBUS_DSN), or `hookbus_dsn = postgresql://...` in the pytest configuration, or "
        "override the `hookbus_dsn` fixture"
    )


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
    import asyncpg

    async with asyncpg.create_pool(hookbus_dsn, min_size=1, max_size=4) as pool:
        yield pool


@_async_fixture
async def hookbus_db(hookbus_pool: asyncpg.Pool) -> AsyncIterator[RolledBackDatabase]:
    """Test mode: the test runs in a transaction rolled back at its end.

    Scopes opened on ``hookbus_db.pool`` (the ``hookbus_pool``) or on
    ``hookbus_db.connection`` run on savepoints of that transaction, with their whole
    lifecycle: precommit, "COMMIT" (a RELEASE, deferred constraints checked), postcommit.
    A postcommit that raises fails the test (take expected ones with
    ``hookbus_db.take_postcommit_errors()``).
    """
    from hookbus_asyncpg._rollback_mode import rolled_back

    _check_loop(hookbus_pool)
    async with rolled_back(hookbus_pool) as database:
        yield database
    _fail_on_postcommit_errors(database, "after the test")


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
