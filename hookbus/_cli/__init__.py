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
    """A subcommand: its name, its one-line summary, and what implements it: a module, or
    ``module:attribute`` for an object of that module with ``configure`` and ``run``."""

    name: str
    summary: str
    module: str


COMMANDS: tuple[Command, ...] = (
    Command("hooks", "list a bus's hooks, event by event, in call order", "hookbus._cli._hooks"),
    Command("explain", "which hooks a dispatch of EVENT [KEY] would run, and why not",
            "hookbus._cli._explain"),
    Command("plugins", "list plugins: version, installed version, state, requires",
            "hookbus._cli._plugins:plugins"),
    Command("install", "install plugins and what they require", "hookbus._cli._plugins:install"),
    Command("uninstall", "uninstall a plugin (--cascade: its dependants first)",
            "hookbus._cli._plugins:uninstall"),
    Command("upgrade", "run the pending migrations of plugins, then post_upgrade",
            "hookbus._cli._plugins:upgrade"),
    Command("migrate", "the same as upgrade; --dry-run prints the plan",
            "hookbus._cli._plugins:migrate"),
    Command("status", "the migration progress table", "hookbus._cli._plugins:status"),
)  # fmt: skip
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
    module_name, _, attribute = command.module.partition(":")
    found: object = importlib.import_module(module_name)
    module = cast(_Module, getattr(found, attribute) if attribute else found)
    parser = argparse.ArgumentParser(prog=f"{prog} {command.name}", description=command.summary)
    module.configure(parser)
    namespace = parser.parse_args(args[1:])
    try:
        return module.run(namespace)
    except CommandError as error:
        print(f"{prog} {command.name}: {error}", file=sys.stderr)
        return 2
