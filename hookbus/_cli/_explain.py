"""``hookbus explain MODULE:BUS EVENT [KEY]``: which hooks a dispatch would run, and why not."""

from __future__ import annotations

import argparse

from .._bus import Bus
from .._exceptions import UnknownEventError
from ._errors import CommandError
from ._target import load_object

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """The command's arguments: where the bus is, the event, and the key (a string)."""
    parser.add_argument("bus", help="where the bus is, as MODULE:ATTRIBUTE (e.g. myapp.hooks:bus)")
    parser.add_argument("event", help="the event's name")
    parser.add_argument(
        "key", nargs="?", default=None, help="the dispatch's key (an entity type, ...), a string"
    )


def run(args: argparse.Namespace) -> int:
    """Print the table of the event's hooks: which run, in order, and why the others do not."""
    bus = load_object(args.bus, Bus, "a hookbus.Bus")
    try:
        print(bus.explain(args.event, args.key))
    except UnknownEventError as error:
        raise CommandError(str(error)) from None
    return 0
