"""The ``hookbus`` command: a registry of subcommands, each in a module imported only when run.

A subcommand is a module with two functions, ``configure(parser)`` (its arguments, on an
``argparse.ArgumentParser``) and ``run(args) -> int`` (its exit status), and one line in
:data:`COMMANDS`. It loads what it needs (an adapter, a database driver) inside ``run``, so that
``hookbus --help`` and the other subcommands never pay for it. A subcommand reports a mistake of
its user by raising :class:`CommandError`: one line on stderr, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from ._errors import CommandError

__all__ = ["COMMANDS", "Command", "CommandError", "main"]


@dataclass(frozen=True, slots=True)
class Command:
    """A subcommand: its name, its one-line summary, and the module that implements it."""

    name: str
    summary: str
    module: str


COMMANDS: tuple[Command, ...] = (
    Command("hooks", "list a bus's hooks, event by event, in call order", "hookbus._cli._hooks"),
)
"""Every subcommand, in the order ``hookbus --help`` lists them."""


class _Module(Protocol):
    def configure(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _usage(prog: str) -> str:
    width = max(len(command.name) for command in COMMANDS)
    lines = [
        f"usage: {prog} COMMAND [ARGUMENTS]",
        "",
        "Look at a hookbus application from the command line.",
        "",
        "commands:",
        *(f"  {command.name:<{width}}  {command.summary}" for command in COMMANDS),
        "",
        f"'{prog} COMMAND --help' describes a command.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str = "hookbus") -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(_usage(prog), file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help", "help"):
        print(_usage(prog))
        return 0
    by_name = {command.name: command for command in COMMANDS}
    command = by_name.get(args[0])
    if command is None:
        close = difflib.get_close_matches(args[0], list(by_name), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; the commands: {', '.join(by_name)}"
        print(f"{prog}: unknown command {args[0]!r}{hint}", file=sys.stderr)
        return 2
    module = cast(_Module, importlib.import_module(command.module))
    parser = argparse.ArgumentParser(prog=f"{prog} {command.name}", description=command.summary)
    module.configure(parser)
    namespace = parser.parse_args(args[1:])
    try:
        return module.run(namespace)
    except CommandError as error:
        print(f"{prog} {command.name}: {error}", file=sys.stderr)
        return 2
