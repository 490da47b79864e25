"""``hookbus hooks MODULE:BUS``: every event with hooks, each hook in call order."""

from __future__ import annotations

import argparse

from .._bus import Bus
from ._target import load_object

__all__ = ["configure", "list_hooks", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """The command's argument: where the bus is."""
    parser.add_argument("bus", help="where the bus is, as MODULE:ATTRIBUTE (e.g. myapp.hooks:bus)")


def run(args: argparse.Namespace) -> int:
    """Print the table of the bus's hooks."""
    print(list_hooks(load_object(args.bus, Bus, "a hookbus.Bus")))
    return 0


def list_hooks(bus: Bus) -> str:
    """Every event with hooks, each hook in call order: key, priority, category, name."""
    rows = [("EVENT", "KEY", "PRIORITY", "CATEGORY", "HOOK")]
    rows += [
        (event, keys, str(info.priority), info.category, info.name)
        for event, keys, info in bus.listing()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[4]])
        for row in rows
    )
