"""What a ``hookbus`` subcommand is made of, for the core's commands and the adapters' alike.

A distribution adds a subcommand with an entry point of the group ``hookbus.commands``::

    [project.entry-points."hookbus.commands"]
    relay = "myapp.commands:relay"

naming a :class:`Subcommand`: an object with ``summary`` (one line for ``hookbus --help``),
``configure(parser)`` and ``run(args) -> int``. Its module must import cheaply (``hookbus
--help`` imports it to show the summary): import a driver inside ``run``. A mistake is a
:class:`CommandError`: one line on stderr, an :class:`ExitStatus`, no traceback.

>>> class Hello:
...     summary = "say hello"
...     def configure(self, parser): add_dsn_option(parser)
...     def run(self, args):
...         dsn = dsn_from(args, required=True)
...         print("hello", hide_password(dsn))
...         return ExitStatus.OK
"""

from __future__ import annotations

from ._cli import main
from ._cli._dsn import DSN_VARIABLE, add_dsn_option, dsn_from, hide_password
from ._cli._errors import CommandError, ExitStatus
from ._cli._registry import GROUP, Subcommand
from ._cli._target import load_object

__all__ = [
    "DSN_VARIABLE",
    "GROUP",
    "CommandError",
    "ExitStatus",
    "Subcommand",
    "add_dsn_option",
    "dsn_from",
    "hide_password",
    "load_object",
    "main",
]
