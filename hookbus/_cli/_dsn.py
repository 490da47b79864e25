"""The database a subcommand works on: ``--dsn``, else ``HOOKBUS_DSN``; never shown with its
password."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterable, Mapping
from typing import Final
from urllib.parse import unquote, urlsplit

from ._errors import CommandError, ExitStatus

__all__ = ["DSN_VARIABLE", "EMBEDDED", "add_dsn_option", "dsn_from", "hide_password", "secrets_of"]

DSN_VARIABLE: Final = "HOOKBUS_DSN"
"""The variable naming the database when ``--dsn`` is not given."""
EMBEDDED: Final = "embedded"
"""``HOOKBUS_DSN=embedded`` asks the demo and tests for a throwaway server: never a command's."""

_PASSWORD_PARAMETER: Final = re.compile(r"(password=)[^&\s]*", re.IGNORECASE)


def add_dsn_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--dsn URL`` to a subcommand's parser; read it back with :func:`dsn_from`."""
    parser.add_argument(
        "--dsn",
        metavar="URL",
        default=None,
        help=f"the PostgreSQL to work on (default: ${DSN_VARIABLE}; the variable keeps a "
        "password out of the process list)",
    )


def dsn_from(
    args: argparse.Namespace,
    *,
    required: bool,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The DSN of ``--dsn``, else of ``HOOKBUS_DSN``; ``None`` if neither is set.

    ``required`` (commands whose work must outlive the run: install, migrate...): a missing
    DSN, or ``embedded``, is a :class:`CommandError` (usage) instead; falling back to a
    throwaway server would report success for work that went nowhere.
    """
    environ = os.environ if environ is None else environ
    given = getattr(args, "dsn", None)
    dsn = (given or environ.get(DSN_VARIABLE, "")).strip() or None
    if dsn == EMBEDDED:
        dsn = None
    if required and dsn is None:
        raise CommandError(
            f"{DSN_VARIABLE} is not set to a database URL and no --dsn is given: this "
            "command's work must outlive the run (never on a throwaway embedded server)",
            ExitStatus.USAGE,
        )
    return dsn


def hide_password(dsn: str) -> str:
    """``dsn`` as it may be shown: its password (in the URL or a ``password=`` parameter)
    replaced by ``***``."""
    shown = _PASSWORD_PARAMETER.sub(r"\1***", dsn)
    try:
        password = urlsplit(shown).password
    except ValueError:  # not a URL at all: nothing more to find
        return shown
    if password:
        shown = shown.replace(f":{password}@", ":***@", 1)
    return shown


def secrets_of(dsns: Iterable[str | None]) -> set[str]:
    """The passwords written in ``dsns``, to be blanked from any text shown."""
    found: set[str] = set()
    for dsn in dsns:
        if not dsn:
            continue
        found.update(m.group(0).split("=", 1)[1] for m in _PASSWORD_PARAMETER.finditer(dsn))
        try:
            password = urlsplit(dsn).password
        except ValueError:
            continue
        if password:
            found.update((password, unquote(password)))
    return {secret for secret in found if secret}
