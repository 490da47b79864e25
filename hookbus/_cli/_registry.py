"""Which subcommands the ``hookbus`` command has: its own, and those of the installed
distributions, found through the ``hookbus.commands`` entry-point group.

An entry point ``name = "module:attribute"`` names a :class:`Subcommand`. Its module is
imported to list the commands (``hookbus --help``) and to run that one command, never for
another: it must import cheaply, and load its driver inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Final, Protocol, runtime_checkable

from ._errors import CommandError, ExitStatus

__all__ = ["BUILTIN", "GROUP", "Found", "Subcommand", "builtin", "registered"]

GROUP: Final = "hookbus.commands"
"""The entry-point group where distributions register their subcommands."""


@runtime_checkable
class Subcommand(Protocol):
    """A subcommand of ``hookbus``: a one-line summary, its arguments, and its work.

    ``configure`` adds the arguments to the subcommand's own parser (sub-verbs as
    subparsers); ``run`` does the work and returns an exit status (:class:`ExitStatus`), or
    raises :class:`CommandError` to end with one line on stderr. Import drivers inside ``run``.
    """

    @property
    def summary(self) -> str:
        """One line for ``hookbus --help``."""
        ...

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the subcommand's arguments to ``parser``."""
        ...

    def run(self, args: argparse.Namespace) -> int:
        """Do the work; the exit status."""
        ...


@dataclass(frozen=True, slots=True)
class _Builtin:
    """One of the core's own subcommands: its module is imported only when it runs."""

    summary: str
    module: str

    def _load(self) -> Subcommand:
        module: Subcommand = importlib.import_module(self.module)
        return module

    def configure(self, parser: argparse.ArgumentParser) -> None:
        self._load().configure(parser)

    def run(self, args: argparse.Namespace) -> int:
        return self._load().run(args)


BUILTIN: Final[dict[str, Subcommand]] = {
    "hooks": _Builtin("list a bus's hooks, event by event, in call order", "hookbus._cli._hooks"),
    "explain": _Builtin(
        "which hooks a dispatch of EVENT [KEY] would run, and why not", "hookbus._cli._explain"
    ),
}
"""The core's subcommands: they need no adapter. An entry point cannot replace them."""


def builtin(name: str) -> Subcommand | None:
    """The core's subcommand ``name``, or ``None``."""
    return BUILTIN.get(name)


@dataclass(frozen=True, slots=True)
class Found:
    """A registered subcommand: its name, where it comes from, and how to get it."""

    name: str
    source: str  # "module:attribute (distribution)"
    load: Callable[[], Subcommand]


def registered() -> list[Found]:
    """The subcommands of the ``hookbus.commands`` group, sorted by name (nothing imported).

    A name that clashes with a built-in one is left out; a name registered twice is kept
    once, and loading it says so.
    """
    by_name: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=GROUP):
        if ep.name not in BUILTIN:
            by_name.setdefault(ep.name, []).append(ep)
    return [_found(name, eps) for name, eps in sorted(by_name.items())]


def _found(name: str, eps: list[EntryPoint]) -> Found:
    ep = eps[0]
    source = f"{ep.value} ({ep.dist.name if ep.dist else 'unknown distribution'})"

    def load() -> Subcommand:
        if len({e.value for e in eps}) > 1:
            raise CommandError(
                f"the command {name!r} is registered twice in the entry-point group {GROUP}: "
                + ", ".join(e.value for e in eps),
                ExitStatus.USAGE,
            )
        try:
            obj: object = ep.load()
        except ModuleNotFoundError as exc:  # an extra not installed: say which module
            raise CommandError(
                f"the command {name!r} ({source}) needs the module {exc.name!r}, which is not "
                "installed",
                ExitStatus.FAILURE,
            ) from None
        except Exception as exc:  # a broken installed distribution: say which, in one line
            raise CommandError(
                f"the command {name!r} ({source}) cannot be loaded: {type(exc).__name__}: {exc}",
                ExitStatus.FAILURE,
            ) from None
        if not isinstance(obj, Subcommand) or not isinstance(getattr(obj, "summary", None), str):
            raise CommandError(
                f"the command {name!r} ({source}) is not a hookbus.cli.Subcommand: it needs "
                "summary, configure(parser) and run(args)",
                ExitStatus.FAILURE,
            )
        return obj

    return Found(name, source, load)
