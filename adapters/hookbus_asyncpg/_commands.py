"""``hookbus plugins|install|uninstall|upgrade|migrate|status``: plugins from the command line.

Each command takes the application as ``MODULE:ATTRIBUTE``, naming a ``hookbus.PluginSet``
(or a function returning one), and the database from ``--dsn``, else ``HOOKBUS_DSN``. The
commands that change state (install, uninstall, upgrade, migrate) refuse to run without it:
falling back to a throwaway server would report success for work that went nowhere.
``plugins``, ``status`` and ``migrate --dry-run`` without it show what the code alone says.

Each command is a :class:`PluginCommand` of this module, registered in the ``hookbus.commands``
entry-point group (pyproject.toml). asyncpg is imported when a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from hookbus import PluginSet
from hookbus.cli import CommandError, ExitStatus, add_dsn_option, dsn_from, load_object

__all__ = ["PluginCommand", "install", "migrate", "plugins", "status", "uninstall", "upgrade"]

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def load_plugins(target: str) -> PluginSet:
    """The ``PluginSet`` named by ``MODULE:ATTRIBUTE`` (called first if it is a function)."""
    found: object = load_object(target, object, "a hookbus.PluginSet")
    if callable(found) and not isinstance(found, PluginSet):
        found = found()
    if not isinstance(found, PluginSet):
        raise CommandError(f"{target} is a {type(found).__qualname__}, not a hookbus.PluginSet")
    return found


def _table(rows: Sequence[Sequence[object]]) -> str:
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


async def _with_manager(
    args: argparse.Namespace, dsn: str, work: Callable[[Any], Coroutine[Any, Any, int]]
) -> int:
    import asyncpg

    import hookbus_asyncpg

    plugins = load_plugins(args.app)
    progress = None
    if getattr(args, "progress", "auto") != "auto":
        bar = args.progress == "bar"

        def progress(title: str, total: int | None, done: int) -> Any:
            return hookbus_asyncpg.open_progress(title, total, done, bar=bar)

    async with asyncpg.create_pool(dsn, min_size=1, max_size=4) as pool:
        manager = hookbus_asyncpg.PluginManager(
            pool, plugins, lock_wait=getattr(args, "lock_wait", 30.0), progress=progress
        )
        try:
            return await work(manager)
        except hookbus_asyncpg.MigrationLockTimeout as exc:
            raise CommandError(str(exc), ExitStatus.BUSY) from None


async def _plugins(args: argparse.Namespace) -> int:
    dsn = dsn_from(args, required=False)
    if dsn is None:
        plugins = load_plugins(args.app)
        rows: list[Sequence[object]] = [("PLUGIN", "VERSION", "REQUIRES")]
        rows += [(p.name, p.version, ",".join(p.requires) or "-") for p in plugins]
        print(_table(rows))
        print("(no database named: the code's plugins only, no install state)")
        return 0

    async def work(manager: Any) -> int:
        rows: list[Sequence[object]] = [
            ("PLUGIN", "VERSION", "INSTALLED", "STATE", "REQUIRES", "ERROR")
        ]
        rows += [
            (s.name, s.version or "-", s.installed or "-", s.state,
             ",".join(s.requires) or "-", s.error or "")
            for s in await manager.status()
        ]  # fmt: skip
        print(_table(rows))
        return 0

    return await _with_manager(args, dsn, work)


async def _install(args: argparse.Namespace) -> int:
    dsn = dsn_from(args, required=True)
    assert dsn is not None

    async def work(manager: Any) -> int:
        done = await manager.install(args.names or None)
        print(f"installed: {', '.join(done) or 'nothing (all installed)'}")
        return 0

    return await _with_manager(args, dsn, work)


async def _uninstall(args: argparse.Namespace) -> int:
    dsn = dsn_from(args, required=True)
    assert dsn is not None

    async def work(manager: Any) -> int:
        done = await manager.uninstall(args.name, cascade=args.cascade)
        print(f"uninstalled: {', '.join(done)}")
        return 0

    return await _with_manager(args, dsn, work)


async def _upgrade(args: argparse.Namespace) -> int:
    dry = getattr(args, "dry_run", False)
    dsn = dsn_from(args, required=not dry)
    if dsn is None:
        plugins = load_plugins(args.app)
        print("no database named: every migration of the code, as if nothing ran yet")
        rows: list[Sequence[object]] = [("PLUGIN", "VERSION", "STAGE", "KIND", "CONDITION")]
        for plugin in plugins:
            for migration in plugin.migrations:
                for stage in migration.stages:
                    runs = "runs" if stage.applies(plugins.env) else f"skipped in {plugins.env}"
                    rows.append((plugin.name, migration.version, stage.name, stage.kind, runs))
        print(_table(rows))
        return 0

    async def work(manager: Any) -> int:
        if dry:
            planned = await manager.plan(args.names or None)
            if not planned:
                print("nothing to migrate")
                return 0
            rows: list[Sequence[object]] = [("PLUGIN", "VERSION", "STAGE", "KIND", "ACTION", "")]
            rows += [(s.plugin, s.version, s.stage, s.kind, s.action, s.detail) for s in planned]
            print(_table(rows))
            return 0
        done = await manager.upgrade(args.names or None)
        print(f"upgraded: {', '.join(done) or 'nothing (all up to date)'}")
        return 0

    return await _with_manager(args, dsn, work)


async def _status(args: argparse.Namespace) -> int:
    dsn = dsn_from(args, required=False)
    if dsn is None:
        print("HOOKBUS_DSN unset: no database to read the progress from")
        return 0

    async def work(manager: Any) -> int:
        stages = await manager.progress(args.plugin)
        if not stages:
            print("no migration has run")
            return 0
        rows: list[Sequence[object]] = [
            ("PLUGIN", "VERSION", "STAGE", "KIND", "STATUS", "ROWS", "BATCHES", "SECONDS",
             "CURSOR", "ERROR")
        ]  # fmt: skip
        rows += [
            (s.plugin, s.version, s.stage, s.kind, s.status,
             f"{s.rows:,}" + (f"/{s.total:,}" if s.total is not None else ""),
             s.batches, f"{s.duration:.2f}", s.cursor or "", s.error or "")
            for s in stages
        ]  # fmt: skip
        print(_table(rows))
        holder = await manager.lock_holder()
        if holder is not None:
            print(f"a migrator holds the lock: pid {holder[0]} ({holder[1]}) since {holder[2]}")
        return 0

    return await _with_manager(args, dsn, work)


class PluginCommand:
    """One plugin command, a ``hookbus.cli.Subcommand``: ``summary``, ``configure(parser)``,
    ``run(args)``."""

    __slots__ = ("_changes", "_extra", "_run", "name", "summary")

    def __init__(
        self,
        name: str,
        summary: str,
        run: Command,
        *,
        changes: bool,
        extra: Callable[[argparse.ArgumentParser], None] | None = None,
    ) -> None:
        self.name = name
        self.summary = summary
        self._run = run
        self._changes = changes
        self._extra = extra

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """The command's arguments."""
        parser.add_argument("app", help="the application's PluginSet, as MODULE:ATTRIBUTE")
        add_dsn_option(parser)
        if self._changes:
            parser.add_argument(
                "--lock-wait", type=float, default=30.0, metavar="SECONDS",
                help="how long to wait for another migrator's lock (default 30)",
            )  # fmt: skip
        if self._extra is not None:
            self._extra(parser)
        parser.set_defaults(plugin_command=self.name)

    def run(self, args: argparse.Namespace) -> int:
        """Run the command; its exit status."""
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        return asyncio.run(self._run(args))


def _names(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", help="plugins (default: all)")


def _migrating(parser: argparse.ArgumentParser) -> None:
    _names(parser)
    parser.add_argument(
        "--progress", choices=("auto", "bar", "lines"), default="auto",
        help="a progress bar, log lines, or a bar on a terminal only (default)",
    )  # fmt: skip


def _dry_run(parser: argparse.ArgumentParser) -> None:
    _migrating(parser)
    parser.add_argument("--dry-run", action="store_true", help="print the plan only")


def _one(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    parser.add_argument(
        "--cascade", action="store_true", help="uninstall the installed plugins requiring it first"
    )


def _plugin_filter(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", help="only this plugin's stages")


plugins = PluginCommand(
    "plugins", "list plugins: version, installed version, state, requires", _plugins,
    changes=False,
)  # fmt: skip
install = PluginCommand(
    "install", "install plugins and what they require", _install, changes=True, extra=_names
)
uninstall = PluginCommand(
    "uninstall", "uninstall a plugin (--cascade: its dependants first)", _uninstall,
    changes=True, extra=_one,
)  # fmt: skip
upgrade = PluginCommand(
    "upgrade", "run the pending migrations of plugins, then post_upgrade", _upgrade,
    changes=True, extra=_migrating,
)  # fmt: skip
migrate = PluginCommand(
    "migrate", "the same as upgrade; --dry-run prints the plan", _upgrade,
    changes=True, extra=_dry_run,
)  # fmt: skip
status = PluginCommand(
    "status", "the migration progress table", _status, changes=False, extra=_plugin_filter
)
