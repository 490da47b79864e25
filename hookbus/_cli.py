"""``python -m hookbus``: look at a bus from the command line."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ._bus import Bus

__all__ = ["main"]


def _load(target: str) -> Bus:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"expected MODULE:ATTRIBUTE (e.g. myapp.hooks:bus), got {target!r}")
    sys.path.insert(0, "")
    obj: object = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, Bus):
        raise SystemExit(f"{target} is a {type(obj).__qualname__}, not a hookbus.Bus")
    return obj


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hookbus", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    hooks = commands.add_parser("hooks", help="list every event, key, hook, priority, category")
    hooks.add_argument("bus", help="where the bus is, as MODULE:ATTRIBUTE")
    args = parser.parse_args(argv)
    print(list_hooks(_load(args.bus)))
    return 0
