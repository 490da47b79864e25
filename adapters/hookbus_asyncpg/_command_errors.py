"""What the database commands tell their user when the work cannot be done: one line and the
exit status of its kind (``hookbus.cli.ExitStatus``), never a traceback, never a password.

:func:`check_dsn` refuses what is not a PostgreSQL URL before anything connects;
:func:`connecting` and :func:`working` turn what connecting and working raise into a
``CommandError``. Exceptions of the application's own code (a hook, a stage's function)
pass through with their traceback: that is where its author looks.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final
from urllib.parse import urlsplit

import asyncpg

from hookbus import HookbusError, MigrationError, PluginError
from hookbus.cli import CommandError, ExitStatus, hide_password

from ._plugins._migration_lock import MigrationLockTimeout
from ._plugins._plugin_state import PluginStateError

__all__ = ["CONNECT_TIMEOUT", "check_dsn", "connecting", "one_line", "working"]

CONNECT_TIMEOUT: Final = 10.0
"""Seconds a server has to accept the command's connection."""

# SQLSTATEs where the database refuses the work as things stand (nothing is changed):
# read-only transaction, insufficient privilege, read-only SQL, and a standby.
_REFUSALS: Final = {"25006", "42501", "2F003", "0A000"}


def one_line(text: str) -> str:
    """``text`` on one line: a list under a heading becomes ``heading: a; b``."""
    lines = [line.strip().removeprefix("- ") for line in text.strip().splitlines()]
    out = ""
    for line in filter(None, lines):
        out = line if not out else f"{out} {line}" if out.endswith(":") else f"{out}; {line}"
    return out


def check_dsn(dsn: str) -> None:
    """Refuse (usage) a DSN that is not a ``postgresql://`` URL, before connecting."""
    try:
        parts = urlsplit(dsn)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise CommandError(f"the DSN {hide_password(dsn)!r} is not a URL: {exc}") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise CommandError(
            f"the DSN {hide_password(dsn)!r} is not a PostgreSQL URL: expected "
            "postgresql://USER@HOST:PORT/DATABASE"
        )


def _where(dsn: str) -> str:
    parts = urlsplit(dsn)
    host = parts.hostname or "the local socket"
    place = f"{host}:{parts.port}" if parts.port else host
    database = parts.path.lstrip("/")
    return f"{place}, database {database!r}" if database else place


@contextmanager
def connecting(dsn: str) -> Iterator[None]:
    """Turn a failure to connect to ``dsn`` into one line with its status."""
    where = _where(dsn)
    try:
        yield
    except asyncpg.InvalidCatalogNameError as exc:
        raise CommandError(f"{exc} (on {where})", ExitStatus.NOT_FOUND) from None
    except (
        asyncpg.InvalidAuthorizationSpecificationError,
        asyncpg.InvalidPasswordError,
    ) as exc:
        raise CommandError(f"the server refused the login: {exc}", ExitStatus.REFUSED) from None
    except asyncpg.ClientConfigurationError as exc:
        raise CommandError(f"the DSN cannot be used: {exc}", ExitStatus.USAGE) from None
    except socket.gaierror as exc:
        raise CommandError(
            f"cannot find the host of the DSN ({where}): {exc.strerror}", ExitStatus.FAILURE
        ) from None
    except TimeoutError:
        raise CommandError(
            f"no answer from {where} within {CONNECT_TIMEOUT:g} s", ExitStatus.FAILURE
        ) from None
    except ConnectionRefusedError:
        raise CommandError(
            f"nothing answers at {where} (connection refused)", ExitStatus.FAILURE
        ) from None
    except (OSError, asyncpg.InterfaceError, asyncpg.ProtocolError) as exc:
        raise CommandError(
            f"cannot talk to PostgreSQL at {where} (is it a PostgreSQL server?): "
            f"{one_line(str(exc)) or type(exc).__name__}",
            ExitStatus.FAILURE,
        ) from None
    except asyncpg.PostgresError as exc:
        raise _database_error(exc, where) from None


@contextmanager
def working(dsn: str) -> Iterator[None]:
    """Turn what hookbus and the database raise while the command works into one line."""
    where = _where(dsn)
    try:
        yield
    except MigrationLockTimeout as exc:
        raise CommandError(one_line(str(exc)), ExitStatus.BUSY) from None
    except PluginStateError as exc:
        raise CommandError(one_line(str(exc)), ExitStatus.REFUSED) from None
    except PluginError as exc:
        raise CommandError(one_line(str(exc)), ExitStatus.REFUSED) from None
    except MigrationError as exc:
        cause = exc.__cause__
        why = f": {type(cause).__name__}: {one_line(str(cause))}" if cause is not None else ""
        raise CommandError(
            one_line(str(exc)) + why + " (hookbus status shows what ran)", ExitStatus.FAILURE
        ) from None
    except asyncpg.PostgresError as exc:
        raise _database_error(exc, where) from None
    except (OSError, asyncpg.InterfaceError) as exc:
        raise CommandError(
            f"lost the connection to {where}: {one_line(str(exc)) or type(exc).__name__}",
            ExitStatus.FAILURE,
        ) from None
    except HookbusError as exc:
        raise CommandError(
            f"{type(exc).__name__}: {one_line(str(exc))}", ExitStatus.FAILURE
        ) from None


def _database_error(exc: asyncpg.PostgresError, where: str) -> CommandError:
    state = getattr(exc, "sqlstate", None) or ""
    status = ExitStatus.REFUSED if state in _REFUSALS else ExitStatus.FAILURE
    verb = "refused" if status is ExitStatus.REFUSED else "answered"
    return CommandError(
        f"PostgreSQL at {where} {verb}: {one_line(str(exc))} (SQLSTATE {state})", status
    )
