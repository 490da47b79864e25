"""The ``hookbus`` command: the core's subcommands, and those adapters register.

The core's own (``hooks``, ``explain``) need no adapter. The others come from the
``hookbus.commands`` entry-point group (the asyncpg adapter registers ``plugins``,
``install``, ``migrate``...): each names a :class:`~hookbus.cli.Subcommand`, loaded to list
it in ``hookbus --help`` and to run it, never for another command. A subcommand reports what
is wrong by raising :class:`~hookbus.cli.CommandError`: one line on stderr, its exit status
(:class:`~hookbus.cli.ExitStatus`), no traceback, and no password of a DSN in it.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from ._dsn import DSN_VARIABLE, secrets_of
from ._errors import CommandError, ExitStatus
from ._registry import BUILTIN, Found, Subcommand, registered

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose mistakes are one line (a :class:`CommandError`), not two."""

    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{message} ('{self.prog} --help' describes it)", ExitStatus.USAGE)


def _usage(prog: str, found: list[Found]) -> str:
    rows = [(name, command.summary) for name, command in BUILTIN.items()]
    for entry in found:
        try:
            rows.append((entry.name, entry.load().summary))
        except CommandError as error:
            rows.append((entry.name, f"(cannot be used: {error.message})"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(
        [
            f"usage: {prog} COMMAND [ARGUMENTS]",
            "",
            "Look at a hookbus application, and work on its database, from the command line.",
            "",
            "commands:",
            *(f"  {name:<{width}}  {summary}" for name, summary in rows),
            "",
            f"'{prog} COMMAND --help' describes a command.",
        ]
    )


def main(argv: Sequence[str] | None = None, prog: str = "hookbus") -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    where = prog
    namespace: argparse.Namespace | None = None
    try:
        if not args:
            print(_usage(prog, registered()), file=sys.stderr)
            return ExitStatus.USAGE
        if args[0] in ("-h", "--help", "help"):
            print(_usage(prog, registered()))
            return ExitStatus.OK
        command = _find(args[0])
        where = f"{prog} {args[0]}"
        parser = _Parser(prog=f"{prog} {args[0]}", description=command.summary)
        command.configure(parser)
        namespace = parser.parse_args(args[1:])
        return int(command.run(namespace))
    except CommandError as error:
        print(f"{where}: {_blank(error.message, namespace)}", file=sys.stderr)
        return error.status
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (| head): stop quietly, as cat does
        _quiet_stdout()
        return ExitStatus.FAILURE


def _find(name: str) -> Subcommand:
    command = BUILTIN.get(name)
    if command is not None:
        return command
    found = {entry.name: entry for entry in registered()}
    if name in found:
        return found[name].load()
    names = [*BUILTIN, *found]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; the commands: {', '.join(names)}"
    raise CommandError(f"unknown command {name!r}{hint}", ExitStatus.USAGE)


def _blank(text: str, namespace: argparse.Namespace | None) -> str:
    """``text`` without any password of the DSNs in play (a driver may echo one)."""
    for secret in secrets_of([getattr(namespace, "dsn", None), os.environ.get(DSN_VARIABLE)]):
        text = text.replace(secret, "***")
    return text


def _quiet_stdout() -> None:
    # Python flushes stdout again at exit, which would raise once more: point it at devnull.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor (redirected in-process): nothing to do
        pass
