"""``hookbus plugins|install|uninstall|upgrade|migrate|undo|status``: plugins from the command
line.

Each command takes the application as ``MODULE:ATTRIBUTE``, naming a ``hookbus.PluginSet``
(or a function returning one), and the database from ``--dsn``, else ``HOOKBUS_DSN``. The
commands that change state (install, uninstall, upgrade, migrate, undo) and ``status`` refuse
to run without it: falling back to a throwaway server would report success for work that went
nowhere. ``plugins`` and ``migrate --dry-run`` without it show what the code alone says.

Whatever stops a command is one line with the exit status of its kind (``hookbus.cli``):
:mod:`._command_errors`. Names are checked against the code before anything connects.

Each command is a :class:`PluginCommand` of this module, registered in the ``hookbus.commands``
entry-point group (pyproject.toml).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import traceback
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, final

from hookbus import PluginError, PluginSet
from hookbus.cli import (
    CommandError,
    ExitStatus,
    add_dsn_option,
    dsn_from,
    load_object,
    render_table,
)

__all__ = [
    "PluginCommand",
    "install",
    "migrate",
    "plugins",
    "status",
    "undo",
    "uninstall",
    "upgrade",
]

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def load_plugins(target: str) -> PluginSet:
    """The ``PluginSet`` named by ``MODULE:ATTRIBUTE`` (called first if it is a function)."""
    from ._command_errors import one_line

    found: object = load_object(target, object, "a hookbus.PluginSet")
    if callable(found) and not isinstance(found, PluginSet):
        try:
            found = found()
        except PluginError as exc:
            raise CommandError(one_line(str(exc)), ExitStatus.REFUSED) from None
        except Exception as exc:  # the application's factory failed: what and where
            frames = traceback.extract_tb(exc.__traceback__)
            origin = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
            raise CommandError(
                f"{target}() raised {type(exc).__name__}: {one_line(str(exc))}{origin}"
            ) from None
    if not isinstance(found, PluginSet):
        raise CommandError(f"{target} is a {type(found).__qualname__}, not a hookbus.PluginSet")
    return found


def _known(plugins: PluginSet, names: Iterable[str], target: str) -> None:
    """Refuse (not found) a plugin name the application's code does not have."""
    known = list(plugins.names())
    unknown = [name for name in names if name not in known]
    if unknown:
        raise CommandError(
            f"no plugin named {', '.join(map(repr, unknown))} in {target} "
            f"(it has: {', '.join(known) or 'none'})",
            ExitStatus.NOT_FOUND,
        )


async def _with_manager(
    args: argparse.Namespace, dsn: str, work: Callable[[Any], Coroutine[Any, Any, int]]
) -> int:
    import asyncpg

    import hookbus_asyncpg

    from ._command_errors import CONNECT_TIMEOUT, check_dsn, connecting, working

    check_dsn(dsn)
    plugins = load_plugins(args.app)
    named = getattr(args, "name", None)
    _known(plugins, [*getattr(args, "names", ()), *([named] if named else [])], args.app)
    progress = None
    if getattr(args, "progress", "auto") != "auto":
        bar = args.progress == "bar"

        def progress(title: str, total: int | None, done: int) -> Any:
            return hookbus_asyncpg.open_progress(title, total, done, bar=bar)

    with connecting(dsn):
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4, timeout=CONNECT_TIMEOUT)
    async with pool:
        manager = hookbus_asyncpg.PluginManager(
            pool, plugins, lock_wait=getattr(args, "lock_wait", 30.0), progress=progress
        )
        with working(dsn):
            return await work(manager)


async def _plugins(args: argparse.Namespace) -> int:
    dsn = dsn_from(args, required=False)
    if dsn is None:
        plugins = load_plugins(args.app)
        rows: list[Sequence[object]] = [("PLUGIN", "VERSION", "REQUIRES")]
        rows += [(p.name, p.version, ",".join(p.requires) or "-") for p in plugins]
        print(render_table(rows))
        print("(no database named: the code's plugins only, no install state)")
        return ExitStatus.OK

    async def work(manager: Any) -> int:
        rows: list[Sequence[object]] = [
            ("PLUGIN", "VERSION", "INSTALLED", "STATE", "REQUIRES", "ERROR")
        ]
        rows += [
            (s.name, s.version or "-", s.installed or "-", s.state,
             ",".join(s.requires) or "-", s.error or "")
            for s in await manager.status()
        ]  # fmt: skip
        print(render_table(rows))
        return ExitStatus.OK

    return await _with_manager(args, dsn, work)


async def _install(args: argparse.Namespace) -> int:
    dsn = dsn_from(args, required=True)
    assert dsn is not None

    async def work(manager: Any) -> int:
        done = await manager.install(args.names or None)
        print(f"installed: {', '.join(done) or 'nothing (all installed)'}")
        return ExitStatus.OK

    return await _with_manager(args, dsn, work)


async def _uninstall(args: argparse.Namespace) -> int:
    dsn = dsn_from(args, required=True)
    assert dsn is not None

    async def work(manager: Any) -> int:
        done = await manager.uninstall(args.name, cascade=args.cascade)
        print(f"uninstalled: {', '.join(done)}")
        return ExitStatus.OK

    return await _with_manager(args, dsn, work)


async def _upgrade(args: argparse.Namespace) -> int:
    dry = getattr(args, "dry_run", False)
    dsn = dsn_from(args, required=not dry)
    if dsn is None:
        plugins = load_plugins(args.app)
        _known(plugins, args.names, args.app)
        print("no database named: every migration of the code, as if nothing ran yet")
        rows: list[Sequence[object]] = [("PLUGIN", "VERSION", "STAGE", "KIND", "CONDITION")]
        for plugin in plugins:
            for migration in plugin.migrations:
                for stage in migration.stages:
                    runs = "runs" if stage.applies(plugins.env) else f"skipped in {plugins.env}"
                    rows.append((plugin.name, migration.version, stage.name, stage.kind, runs))
        print(render_table(rows))
        return ExitStatus.OK

    async def work(manager: Any) -> int:
        if dry:
            planned = await manager.plan(args.names or None)
            if not planned:
                print("nothing to migrate")
                return ExitStatus.OK
            rows: list[Sequence[object]] = [("PLUGIN", "VERSION", "STAGE", "KIND", "ACTION", "")]
            rows += [(s.plugin, s.version, s.stage, s.kind, s.action, s.detail) for s in planned]
            print(render_table(rows))
            return ExitStatus.OK
        done = await manager.upgrade(args.names or None)
        print(f"upgraded: {', '.join(done) or 'nothing (all up to date)'}")
        return ExitStatus.OK

    return await _with_manager(args, dsn, work)


async def _undo(args: argparse.Namespace) -> int:
    dsn = dsn_from(args, required=True)
    assert dsn is not None

    async def work(manager: Any) -> int:
        batches = await manager.undo(args.name, args.version, args.stage)
        print(f"undone: {batches} batch(es) of {args.name} {args.version} / {args.stage}")
        return ExitStatus.OK

    return await _with_manager(args, dsn, work)


async def _status(args: argparse.Namespace) -> int:
    dsn = dsn_from(args, required=True)
    assert dsn is not None

    async def work(manager: Any) -> int:
        stages = await manager.progress(args.plugin)
        runs = await manager.hook_runs(args.plugin)
        errors = await manager.errors(args.plugin)
        sections = [
            f"{title}:\n{render_table(rows)}"
            for title, rows in (
                ("stages", _stage_rows(stages)),
                ("lifecycle hooks", _hook_rows(runs)),
                ("errors, oldest first", _error_rows(errors)),
            )
            if len(rows) > 1
        ]
        print("\n\n".join(sections) or "nothing has run: no migration, no lifecycle hook")
        for s in stages:
            if s.untouched:
                print(
                    f"warning: {s.untouched} batch(es) of {s.plugin} {s.version} / {s.stage} "
                    "changed none of the rows of their page"
                )
        holder = await manager.lock_holder()
        if holder is not None:
            print(f"a migrator holds the lock: pid {holder[0]} ({holder[1]}) since {holder[2]}")
        return ExitStatus.OK

    return await _with_manager(args, dsn, work)


def _when(at: datetime | None) -> str:
    """A recorded time, in UTC to the millisecond (failures often come close together)."""
    if at is None:
        return "-"
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _stage_rows(stages: Sequence[Any]) -> list[Sequence[object]]:
    rows: list[Sequence[object]] = [
        ("PLUGIN", "VERSION", "STAGE", "KIND", "STATUS", "ROWS", "BATCHES", "UNTOUCHED",
         "SECONDS", "FINISHED", "CURSOR", "ERROR")
    ]  # fmt: skip
    rows += [
        (s.plugin, s.version, s.stage, s.kind, s.status,
         f"{s.rows:,}" + (f"/{s.total:,}" if s.total is not None else ""),
         s.batches, s.untouched, f"{s.duration:.2f}", _when(s.finished_at), s.cursor or "",
         s.error or "")
        for s in stages
    ]  # fmt: skip
    return rows


def _hook_rows(runs: Sequence[Any]) -> list[Sequence[object]]:
    rows: list[Sequence[object]] = [
        ("PLUGIN", "VERSION", "HOOK", "STATUS", "SECONDS", "STARTED", "ERROR")
    ]
    rows += [
        (r.plugin, r.version or "-", r.hook, r.status, f"{r.duration:.2f}",
         _when(r.started_at), r.error or "")
        for r in runs
    ]  # fmt: skip
    return rows


def _error_rows(errors: Sequence[Any]) -> list[Sequence[object]]:
    rows: list[Sequence[object]] = [("AT", "PLUGIN", "VERSION", "STEP", "ERROR")]
    rows += [(_when(e.at), e.plugin, e.version or "-", e.step, e.error) for e in errors]
    return rows


def _seconds(text: str) -> float:
    """``--lock-wait``: a finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number of seconds, 0 or more")
    return value


@final
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
                "--lock-wait", type=_seconds, default=30.0, metavar="SECONDS",
                help="how long to wait for another migrator's lock (default 30)",
            )  # fmt: skip
        if self._extra is not None:
            self._extra(parser)

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


def _stage(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the plugin")
    parser.add_argument("version", help="the version of the migration holding the stage")
    parser.add_argument("stage", help="the batched stage to undo (its undo function runs)")


def _plugin_filter(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", help="only this plugin's stages, hook runs and errors")


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
undo = PluginCommand(
    "undo", "undo a batched stage of a plugin's migration, batch by batch", _undo,
    changes=True, extra=_stage,
)  # fmt: skip
status = PluginCommand(
    "status", "what ran, how long, what failed and when: stages, lifecycle hooks, errors",
    _status, changes=False, extra=_plugin_filter,
)  # fmt: skip
