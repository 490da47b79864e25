"""Installing, upgrading and uninstalling plugins on PostgreSQL, one scope per plugin.

Install, per plugin in load order: ``pre_init``, its hooks registered on the bus,
``post_init``, and its row set ``installed``, all in one hookbus transaction scope. The row
says ``installing`` (committed first) while that runs; if it fails, the scope rolls back, the
hooks are removed and the row says ``failed`` with the error; a rerun installs it again.
Upgrade runs the migrations between the installed and the new version, then
``post_upgrade(ctx, from_version)`` and the new version, in one scope. Uninstall runs
``uninstall`` and the row ``uninstalled`` in one scope, then removes the plugin's hooks; it is
refused while an installed plugin requires it, unless ``cascade=True``.

Every state-changing call runs under the migration lock (one migrator at a time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Final, final

import asyncpg
import msgspec

from hookbus import HookInfo, Migration, Plugin, PluginSet, StageContext, parse_version

from .._transaction._transaction import AsyncpgTransaction, transaction
from ._hook_runs import (
    ErrorRecord,
    HookName,
    HookRun,
    read_errors,
    read_hook_runs,
    record_error,
    record_hook,
)
from ._migration_lock import lock_holder
from ._migrator import Migrator, PlannedStage, ProgressFactory
from ._plugin_state import (
    PluginState,
    PluginStateError,
    PluginStateName,
    read_states,
    write_state,
)
from ._stage_records import StageProgress, read_progress, skipped_stages

__all__ = ["PluginManager", "PluginStateError", "PluginStatus"]

logger: Final = logging.getLogger("hookbus.plugins")


@final
class PluginStatus(msgspec.Struct, frozen=True):
    """A plugin as the code and the database see it, for listings."""

    name: str
    version: str | None  # of the code; None for a plugin only the database knows
    installed: str | None  # the installed version
    state: str  # the database's state, or "not installed"
    requires: tuple[str, ...]
    error: str | None


@final
class PluginManager:
    """The plugins of ``plugins`` on the database of ``pool``.

    ``lock_wait`` bounds the wait for another migrator's lock; ``progress`` makes the
    progress display of batched stages (by default a bar on a terminal, log lines otherwise).
    """

    __slots__ = ("_active", "_plugins", "_pool", "migrator")

    def __init__(
        self,
        pool: asyncpg.Pool,
        plugins: PluginSet,
        *,
        lock_wait: float = 30.0,
        progress: ProgressFactory | None = None,
    ) -> None:
        self._pool = pool
        self._plugins = plugins
        self.migrator: Final = Migrator(
            pool, plugins.env, bus=plugins.bus, progress=progress, lock_wait=lock_wait
        )
        self._active: dict[str, list[HookInfo]] = {}

    @property
    def lock_wait(self) -> float:
        """How long a state-changing call waits for another migrator's lock, in seconds."""
        return self.migrator.lock.wait

    # -- reading -------------------------------------------------------------------------

    async def states(self) -> dict[str, PluginState]:
        """The database's rows of plugin state, by name."""
        async with self._pool.acquire() as conn:
            return await read_states(conn)

    async def status(self) -> list[PluginStatus]:
        """Every plugin of the code in load order, then those only the database knows."""
        states = await self.states()
        rows = []
        for plugin in self._plugins:
            state = states.pop(plugin.name, None)
            rows.append(
                PluginStatus(
                    plugin.name,
                    plugin.version,
                    state.version if state else None,
                    state.state if state else "not installed",
                    plugin.requires,
                    state.error if state else None,
                )
            )
        for state in states.values():
            rows.append(
                PluginStatus(
                    state.name, None, state.version, state.state, state.requires, state.error
                )
            )
        return rows

    async def progress(self, plugin: str | None = None) -> list[StageProgress]:
        """The migration progress rows (of ``plugin``, or all)."""
        async with self._pool.acquire() as conn:
            return await read_progress(conn, plugin)

    async def hook_runs(self, plugin: str | None = None) -> list[HookRun]:
        """Every run of a lifecycle hook (of ``plugin``, or all): status, times, error."""
        async with self._pool.acquire() as conn:
            return await read_hook_runs(conn, plugin)

    async def errors(self, plugin: str | None = None) -> list[ErrorRecord]:
        """Every failure kept (of ``plugin``, or all), with its time, oldest first."""
        async with self._pool.acquire() as conn:
            return await read_errors(conn, plugin)

    async def lock_holder(self) -> tuple[int, str, datetime | None] | None:
        """The migrator holding the migration lock now: ``(pid, application_name, since)``."""
        async with self._pool.acquire() as conn:
            return await lock_holder(conn)

    async def plan(self, names: Iterable[str] | None = None) -> list[PlannedStage]:
        """The stages an upgrade of ``names`` (default: every plugin) would run now."""
        states = await self.states()
        planned = await self.migrator.own_plan()  # hookbus's own tables come first
        for plugin in self._selected(names):
            state = states.get(plugin.name)
            if state is None or not state.is_installed or state.version is None:
                continue
            revisits = await self._revisits(plugin, state.version)
            planned += await self.migrator.plan(plugin.name, revisits, revisit=True)
            if state.version != plugin.version or state.state != "installed":
                migrations = plugin.migrations_between(state.version, plugin.version)
                planned += await self.migrator.plan(plugin.name, migrations)
        return planned

    async def _revisits(self, plugin: Plugin, installed: str) -> list[Migration]:
        """The plugin's migrations at or below ``installed`` with a stage left undone (skipped
        by its condition, or failed since) that may run now."""
        async with self._pool.acquire() as conn:
            left = await skipped_stages(conn, plugin.name)
        if not left:
            return []
        ceiling = parse_version(installed)
        return [
            m
            for m in plugin.migrations
            if m.version_key <= ceiling
            and any((m.version, stage.name) in left for stage in m.stages)
        ]

    # -- the bus -------------------------------------------------------------------------

    async def activate(self) -> list[str]:
        """Register the hooks of the installed plugins on the bus (at application start)."""
        states = await self.states()
        for plugin in self._plugins:
            state = states.get(plugin.name)
            if state is not None and state.is_installed:
                self._register(plugin)
        return list(self._active)

    def _register(self, plugin: Plugin) -> None:
        if plugin.name in self._active:
            return
        bus = self._plugins.bus
        infos: list[HookInfo] = []
        try:
            for spec in plugin.hooks:
                fn = spec.fn() if isinstance(spec.fn, type) else spec.fn
                infos.append(
                    bus.register(
                        fn,
                        *spec.events,
                        select=spec.select,
                        category=spec.category,
                        priority=spec.priority,
                    )
                )
        except BaseException:
            for info in infos:
                bus.unregister(info)
            raise
        self._active[plugin.name] = infos

    def _unregister(self, name: str) -> None:
        for info in self._active.pop(name, ()):
            self._plugins.bus.unregister(info)

    # -- changing state ------------------------------------------------------------------

    async def install(self, names: Iterable[str] | None = None) -> list[str]:
        """Install ``names`` (default: every plugin) and what they require, in load order.

        Installed plugins are skipped; the first failure stops the run (the plugins before it
        stay installed) and propagates with a note naming the plugin. Returns the names
        installed by this call.
        """
        done = []
        async with self.migrator.locked():
            await self._create_tables()
            states = await self.states()
            for plugin in self._selected(names, with_requirements=True):
                state = states.get(plugin.name)
                if state is not None and state.is_installed:
                    self._register(plugin)
                    if state.version != plugin.version:
                        logger.info(
                            "%s is installed at %s: upgrade it to %s",
                            plugin.name,
                            state.version,
                            plugin.version,
                        )
                    continue
                await self._install(plugin, None if state is None else state.state)
                done.append(plugin.name)
        return done

    async def _install(self, plugin: Plugin, was: PluginStateName | None) -> None:
        name, version = plugin.name, plugin.version
        await self._begin(plugin, was, None, "installing")
        running = _Running()
        try:
            async with self.migrator.fenced(self._pool) as tx:
                ctx = StageContext(tx, self._plugins.env, name, self._plugins.bus)
                await self._call(running, tx, plugin, version, "pre_init", ctx)
                self._register(plugin)
                await self._call(running, tx, plugin, version, "post_init", ctx)
                await self._finish(tx, plugin, "installing")
        except Exception as exc:
            self._unregister(name)
            await self._fail(plugin, None, exc, "installing", running)
            raise
        logger.info("installed %s %s", name, version)

    async def _begin(
        self,
        plugin: Plugin,
        was: PluginStateName | None,
        version: str | None,
        doing: PluginStateName,
    ) -> None:
        """Move ``plugin`` (at ``version``) from ``was`` to ``doing``, in a scope of its own."""
        async with self.migrator.fenced(self._pool) as tx:
            await write_state(
                tx.connection,
                plugin.name,
                was=was,
                version=version,
                target=plugin.version,
                state=doing,
                requires=plugin.requires,
            )

    async def _finish(self, tx: AsyncpgTransaction, plugin: Plugin, doing: PluginStateName) -> None:
        """Move ``plugin`` from ``doing`` to installed at its code's version, in ``tx``."""
        await write_state(
            tx.connection,
            plugin.name,
            was=doing,
            version=plugin.version,
            target=plugin.version,
            state="installed",
            requires=plugin.requires,
        )

    async def _call(
        self,
        running: _Running,
        tx: AsyncpgTransaction,
        plugin: Plugin,
        version: str | None,
        hook: HookName,
        *args: object,
    ) -> None:
        """Run a lifecycle hook of ``plugin`` in ``tx``, recorded there when it completes."""
        fn = getattr(plugin, hook)
        if fn is None:
            return
        running.hook, running.started = hook, time.perf_counter()
        await fn(*args)
        took = time.perf_counter() - running.started
        running.hook = None
        token = self.migrator.lock.token
        await record_hook(tx.connection, plugin.name, version, hook, "completed", took, None, token)

    async def _fail(
        self,
        plugin: Plugin,
        version: str | None,
        exc: Exception,
        doing: PluginStateName,
        running: _Running,
    ) -> None:
        name, target = plugin.name, plugin.version
        lock = self.migrator.lock
        error = f"{type(exc).__name__}: {exc}"
        async with transaction(self._pool, find_outcome=False) as tx:
            await self._record_failure(tx, plugin, target, running, error)
            if not await lock.still_current(tx.connection):
                exc.add_note(
                    f"while {doing} plugin {name!r} {target}: the migration lock was taken over, "
                    "its state is left to the new holder"
                )
                return
            await write_state(
                tx.connection,
                name,
                was=doing,
                version=version,
                target=target,
                state="failed",
                requires=plugin.requires,
                error=error,
            )
        exc.add_note(f"while {doing} plugin {name!r} {target}: its state is now 'failed'")

    async def _record_failure(
        self,
        tx: AsyncpgTransaction,
        plugin: Plugin,
        version: str | None,
        running: _Running,
        error: str,
    ) -> None:
        """Keep the error in the history, and the failed hook's run if a hook failed."""
        token = self.migrator.lock.token
        if running.hook is None:
            return  # a stage's failure: the migrator kept it
        took = time.perf_counter() - running.started  # the run's interval ends just now:
        await record_hook(  # recorded first, before another round trip shifts it later
            tx.connection, plugin.name, version, running.hook, "failed", took, error, token
        )
        await record_error(tx.connection, plugin.name, version, running.hook, token, error)

    async def upgrade(self, names: Iterable[str] | None = None) -> list[str]:
        """Bring installed plugins (``names``, default all) to their code's version.

        For each, in load order: the migrations with ``installed < version <= new``, then
        ``post_upgrade(ctx, installed)`` and the new version, in one scope. A failure leaves
        the plugin ``failed`` at its installed version; a rerun resumes its migrations.
        Returns the names upgraded by this call.
        """
        done = []
        async with self.migrator.locked():
            await self._create_tables()
            states = await self.states()
            for plugin in self._selected(names):
                state = states.get(plugin.name)
                if state is None or not state.is_installed or state.version is None:
                    continue
                if parse_version(state.version) > parse_version(plugin.version):
                    raise PluginStateError(
                        f"plugin {plugin.name!r} is installed at {state.version}, newer than "
                        f"the code's {plugin.version}: downgrades are not supported"
                    )
                revisits = await self._revisits(plugin, state.version)
                if state.version == plugin.version and state.state == "installed":
                    # Up to date, but stages once skipped by their condition may run now.
                    plan = await self.migrator.plan(plugin.name, revisits, revisit=True)
                    if plan:
                        for migration in revisits:
                            await self.migrator.run(plugin.name, migration, revisit=True)
                        done.append(plugin.name)
                    continue
                await self._upgrade(plugin, state.version, state.state, revisits)
                done.append(plugin.name)
        return done

    migrate = upgrade

    async def _upgrade(
        self,
        plugin: Plugin,
        installed: str,
        was: PluginStateName,
        revisits: Iterable[Migration] = (),
    ) -> None:
        name, version = plugin.name, plugin.version
        await self._begin(plugin, was, installed, "upgrading")
        running = _Running()
        try:
            for migration in revisits:
                await self.migrator.run(name, migration, revisit=True)
            for migration in plugin.migrations_between(installed, version):
                await self.migrator.run(name, migration)
            async with self.migrator.fenced(self._pool) as tx:
                ctx = StageContext(tx, self._plugins.env, name, self._plugins.bus)
                await self._call(running, tx, plugin, version, "post_upgrade", ctx, installed)
                await self._finish(tx, plugin, "upgrading")
        except Exception as exc:
            await self._fail(plugin, installed, exc, "upgrading", running)
            raise
        logger.info("upgraded %s from %s to %s", name, installed, version)

    async def uninstall(self, name: str, *, cascade: bool = False) -> list[str]:
        """Uninstall ``name``: its ``uninstall`` hook, then its hooks leave the bus.

        Refused while an installed plugin requires it (directly or not), unless ``cascade``:
        then those are uninstalled first, dependants before what they require. Each plugin
        is uninstalled in a scope of its own. Returns the names uninstalled, in order.
        """
        plugin = self._plugins[name]
        if not _is_installed(await self.states(), name):  # refused before anything is made
            raise PluginStateError(f"plugin {name!r} is not installed")
        async with self.migrator.locked():
            await self._create_tables()
            states = await self.states()
            state = states.get(name)
            if state is None or not _is_installed(states, name):  # uninstalled meanwhile
                raise PluginStateError(f"plugin {name!r} is not installed")
            dependants = _installed_dependants(name, states)
            if dependants and not cascade:
                raise PluginStateError(
                    f"cannot uninstall {name!r}: installed plugin(s) "
                    + ", ".join(
                        f"{d} (requires {' -> '.join(chain)})" for d, chain in dependants.items()
                    )
                    + " depend on it; uninstall them first or pass cascade=True"
                )
            order = [*reversed(_load_order(self._plugins, dependants)), plugin]
            for target in order:
                await self._uninstall(target, states[target.name])
        return [p.name for p in order]

    async def _uninstall(self, plugin: Plugin, state: PluginState) -> None:
        running = _Running()
        try:
            async with self.migrator.fenced(self._pool) as tx:
                ctx = StageContext(tx, self._plugins.env, plugin.name, self._plugins.bus)
                await self._call(running, tx, plugin, state.version, "uninstall", ctx)
                await write_state(
                    tx.connection,
                    plugin.name,
                    was=state.state,
                    version=state.version,
                    target=state.target_version,
                    state="uninstalled",
                    requires=state.requires,
                )
        except Exception as exc:  # the plugin stays installed; the failure is kept
            error = f"{type(exc).__name__}: {exc}"
            async with transaction(self._pool, find_outcome=False) as tx:
                await self._record_failure(tx, plugin, state.version, running, error)
            raise
        self._unregister(plugin.name)
        logger.info("uninstalled %s", plugin.name)

    async def undo(self, name: str, version: str, stage: str) -> int:
        """Undo a batched stage of ``name``'s migration to ``version`` (see ``Migrator.undo``).

        The plugin's recorded version does not change: the upgrade that ran the stage must be
        undone by the application (a new version, or a reinstall). Returns batches undone.
        """
        plugin = self._plugins[name]
        migration = next((m for m in plugin.migrations if m.version == version), None)
        if migration is None:
            raise PluginStateError(f"plugin {name!r} has no migration to {version}")
        async with self.migrator.locked():
            await self._create_tables()
            return await self.migrator.undo(name, migration, stage)

    # -- helpers -------------------------------------------------------------------------

    async def _create_tables(self) -> None:
        await self.migrator.create_tables()

    def _selected(
        self, names: Iterable[str] | None, *, with_requirements: bool = False
    ) -> tuple[Plugin, ...]:
        if names is None:
            return self._plugins.plugins
        names = list(names)
        if with_requirements:
            return self._plugins.with_dependencies(names)
        wanted = {self._plugins[n].name for n in names}
        return tuple(p for p in self._plugins if p.name in wanted)


@final
class _Running:
    """The lifecycle hook running now, if any, and since when (to record its failure)."""

    __slots__ = ("hook", "started")

    def __init__(self) -> None:
        self.hook: HookName | None = None
        self.started = 0.0


def _is_installed(states: dict[str, PluginState], name: str) -> bool:
    state = states.get(name)
    return state is not None and state.is_installed


def _installed_dependants(name: str, states: dict[str, PluginState]) -> dict[str, list[str]]:
    """Installed plugins requiring ``name`` (by the database's rows), with the chain."""
    chains: dict[str, list[str]] = {name: [name]}
    grew = True
    while grew:
        grew = False
        for state in sorted(states.values(), key=lambda s: s.name):
            if state.name in chains or not state.is_installed:
                continue
            need = next((r for r in state.requires if r in chains), None)
            if need is not None:
                chains[state.name] = [state.name, *chains[need]]
                grew = True
    del chains[name]
    return chains


def _load_order(plugins: PluginSet, names: Iterable[str]) -> list[Plugin]:
    wanted = set(names)
    missing = wanted - set(plugins.names())
    if missing:
        raise PluginStateError(
            f"installed plugin(s) {sorted(missing)} are not in the application's code: "
            "cannot run their uninstall hooks"
        )
    return [p for p in plugins if p.name in wanted]
