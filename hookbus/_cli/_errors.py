"""The exit statuses of the ``hookbus`` command and the exception that sets one."""

from __future__ import annotations

import enum
from typing import final

__all__ = ["CommandError", "ExitStatus"]


@final
class ExitStatus(enum.IntEnum):
    """The exit status of a ``hookbus`` command: one per kind of answer, the same for every
    subcommand (those of adapters included)."""

    OK = 0
    """The work is done."""
    FAILURE = 1
    """The work was tried and failed: the database does not answer, a stage raised."""
    USAGE = 2
    """The command line is wrong: an argument, an option, a ``MODULE:ATTRIBUTE``, a DSN."""
    NOT_FOUND = 3
    """Something named does not exist: a plugin, a database."""
    REFUSED = 4
    """Refused as things stand, nothing changed: a plugin not installed, or required by
    others, plugins that cannot load together, a read-only database."""
    BUSY = 5
    """Another process holds the lock the work needs (another migrator)."""


class CommandError(Exception):
    """What a subcommand raises to end with one line on stderr and ``status``, no traceback.

    >>> raise CommandError("plugin 'crm' is not installed", status=ExitStatus.REFUSED)
    ... # doctest: +SKIP
    """

    def __init__(self, message: str, status: ExitStatus = ExitStatus.USAGE) -> None:
        super().__init__(message)
        self.message: str = message
        self.status: ExitStatus = ExitStatus(status)
