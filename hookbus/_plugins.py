"""Plugins: hooks bundled with lifecycle hooks, dependencies and migrations, in dependency order.

>>> async def post_init(ctx):
...     await ctx.tx.connection.execute("INSERT INTO setting VALUES ('billing', 'on')")
>>> billing = Plugin("billing", "1.0", requires=["accounts"], post_init=post_init,
...                  hooks=[PluginHook(check_invoice, "before_add_entity")])  # doctest: +SKIP
>>> plugins = PluginSet(bus, [accounts, billing])  # doctest: +SKIP

``PluginSet`` settles everything before anything runs: the plugins found through entry points
(group ``hookbus.plugins``) and those given, each plugin's hooks and lifecycle hooks checked,
dependencies resolved. Every problem found (an import error, a missing dependency, a cycle,
a bad signature, an undeclared event, a duplicate name) is reported in one ``PluginError``
that names the chains. Installing, upgrading and uninstalling belong to a database adapter
(``hookbus_asyncpg.PluginManager``).
"""

from __future__ import annotations

import graphlib
import importlib.metadata
import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Final, TypeAlias, final

from ._bus import Bus
from ._exceptions import HookbusError
from ._hooks import Hook
from ._migrations import (
    Environment,
    Migration,
    parse_version,
    signature_problem,
    storable_text_problem,
)
from ._selectors import Selector

__all__ = ["ENTRY_POINT_GROUP", "Plugin", "PluginError", "PluginHook", "PluginSet"]

#: The entry point group plugins are published under.
ENTRY_POINT_GROUP: Final = "hookbus.plugins"

LifecycleHook: TypeAlias = Callable[..., Awaitable[object]]


class PluginError(HookbusError):
    """Plugins that cannot be loaded: ``problems`` lists every one found, one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: Final = tuple(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{len(self.problems)} plugin problem(s), nothing was run:\n{lines}")


@final
class PluginHook:
    """A hook a plugin registers on the bus while installed: ``bus.register``'s arguments."""

    __slots__ = ("category", "events", "fn", "priority", "select")

    def __init__(
        self,
        fn: Callable[[Any], Any] | type[Hook] | Hook,
        *events: str,
        select: Selector | None = None,
        category: str | None = None,
        priority: int | None = None,
    ) -> None:
        self.fn: Final = fn
        self.events: Final = events
        self.select: Final = select
        self.category: Final = category
        self.priority: Final = priority


@final
class Plugin:
    """A named, versioned bundle of hooks, lifecycle hooks and migrations.

    ``requires`` must be installed first; ``optional`` are ordered first when present.
    Lifecycle hooks are async functions: ``pre_init(ctx)`` before the plugin's hooks are
    registered, ``post_init(ctx)`` after, ``post_upgrade(ctx, from_version)`` after the
    migrations of an upgrade, ``uninstall(ctx)`` before its hooks are removed. ``ctx`` is a
    ``StageContext``: the transaction scope (``ctx.tx``), the environment (``ctx.env``), the
    bus. Nothing is checked here beyond types: ``PluginSet`` reports all problems at once.
    """

    __slots__ = (
        "hooks",
        "migrations",
        "name",
        "optional",
        "post_init",
        "post_upgrade",
        "pre_init",
        "requires",
        "uninstall",
        "version",
    )

    def __init__(
        self,
        name: str,
        version: str,
        *,
        requires: Iterable[str] = (),
        optional: Iterable[str] = (),
        hooks: Iterable[PluginHook] = (),
        pre_init: LifecycleHook | None = None,
        post_init: LifecycleHook | None = None,
        post_upgrade: LifecycleHook | None = None,
        uninstall: LifecycleHook | None = None,
        migrations: Iterable[Migration] = (),
    ) -> None:
        self.name: Final = name
        self.version: Final = version
        self.requires: Final = tuple(requires)
        self.optional: Final = tuple(optional)
        self.hooks: Final = tuple(hooks)
        self.pre_init: Final = pre_init
        self.post_init: Final = post_init
        self.post_upgrade: Final = post_upgrade
        self.uninstall: Final = uninstall
        # (a wrong item is reported by problems(), with the plugin's other problems)
        self.migrations: Final = tuple(
            sorted(migrations, key=lambda m: getattr(m, "version_key", ()))
        )

    def migrations_between(self, installed: str, new: str) -> tuple[Migration, ...]:
        """The migrations with ``installed < version <= new``, oldest first."""
        low, high = parse_version(installed), parse_version(new)
        return tuple(m for m in self.migrations if low < m.version_key <= high)

    def problems(self, bus: Bus) -> list[str]:
        """What is wrong with this plugin on its own (not its dependencies)."""
        who = f"plugin {self.name!r}"
        found: list[str] = []
        problem = storable_text_problem(self.name)
        if problem:
            return [f"plugin {self.name!r}: a plugin name {problem}"]
        if self.name == "hookbus":
            return [f"{who}: the name is hookbus's own (its tables are migrated under it)"]
        try:
            parse_version(self.version)
        except ValueError as exc:
            found.append(f"{who}: {exc}")
        for hook_name, arity in (
            ("pre_init", 1),
            ("post_init", 1),
            ("post_upgrade", 2),
            ("uninstall", 1),
        ):
            fn = getattr(self, hook_name)
            problem = None if fn is None else signature_problem(fn, arity)
            if problem:
                found.append(f"{who}: {hook_name} {problem}")
        declared = {spec.name for spec in bus.events()}
        for spec in self.hooks:
            if not isinstance(spec, PluginHook):
                found.append(f"{who}: {spec!r} is not a PluginHook")
                continue
            problem = _hook_problem(spec, declared)
            if problem:
                found.append(f"{who}: {problem}")
        for migration in self.migrations:
            if not isinstance(migration, Migration):
                found.append(f"{who}: {migration!r} is not a Migration")
        versions = [m.version for m in self.migrations if isinstance(m, Migration)]
        if len(set(versions)) != len(versions):
            found.append(f"{who}: two migrations for the same version in {versions}")
        return found

    def __repr__(self) -> str:
        return f"Plugin({self.name!r}, {self.version!r})"


@final
class PluginSet:
    """The plugins of an application, checked and in load order, with their bus.

    ``plugins`` are given explicitly; with ``entry_points=True`` those published under
    ``group`` join them. Load order is dependency order, ties broken by name. Raises
    ``PluginError`` listing every problem, before anything runs.
    """

    __slots__ = ("_by_name", "bus", "env", "plugins")

    def __init__(
        self,
        bus: Bus,
        plugins: Iterable[Plugin] = (),
        *,
        entry_points: bool = False,
        group: str = ENTRY_POINT_GROUP,
        env: Environment | None = None,
    ) -> None:
        problems: list[str] = []
        found = list(plugins)
        if entry_points:
            found += _from_entry_points(group, problems)
        self.bus: Final = bus
        self.env: Final = env if env is not None else Environment.from_env()
        self.plugins: Final = _resolve(found, bus, problems)
        self._by_name: Final = {p.name: p for p in self.plugins}

    def __getitem__(self, name: str) -> Plugin:
        try:
            return self._by_name[name]
        except KeyError:
            known = sorted(self._by_name)
            raise LookupError(f"no plugin named {name!r} (known: {known})") from None

    def __iter__(self) -> Iterator[Plugin]:
        return iter(self.plugins)

    def __len__(self) -> int:
        return len(self.plugins)

    def names(self) -> tuple[str, ...]:
        """The plugin names in load order."""
        return tuple(self._by_name)

    def dependants(self, name: str) -> tuple[Plugin, ...]:
        """The plugins that require ``name``, directly or not, in load order."""
        needed = {name}
        for plugin in self.plugins:  # load order: a dependant comes after what it requires
            if needed.intersection(plugin.requires):
                needed.add(plugin.name)
        return tuple(p for p in self.plugins if p.name in needed and p.name != name)

    def with_dependencies(self, names: Iterable[str]) -> tuple[Plugin, ...]:
        """``names`` and everything they require, in load order."""
        wanted = {self[name].name for name in names}
        for plugin in reversed(self.plugins):
            if plugin.name in wanted:
                wanted.update(plugin.requires)
        return tuple(p for p in self.plugins if p.name in wanted)


def _from_entry_points(group: str, problems: list[str]) -> list[Plugin]:
    found = []
    for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name):
        try:
            obj = ep.load()
        except Exception as exc:  # every import error is reported, none stops the others
            problems.append(f"entry point {ep.name!r} ({ep.value}): {type(exc).__name__}: {exc}")
            continue
        if callable(obj) and not isinstance(obj, Plugin):
            try:
                obj = obj()
            except Exception as exc:
                problems.append(f"entry point {ep.name!r} ({ep.value}) raised {exc!r}")
                continue
        if not isinstance(obj, Plugin):
            problems.append(f"entry point {ep.name!r} ({ep.value}) gave {obj!r}, not a Plugin")
            continue
        found.append(obj)
    return found


def _hook_problem(spec: PluginHook, declared: set[str]) -> str | None:
    fn: Any = spec.fn
    events = spec.events or getattr(fn, "events", ())
    if isinstance(fn, type):
        if not issubclass(fn, Hook):
            return f"hook {fn!r} is a class but not a hookbus.Hook"
        name = fn.__qualname__
        fn = fn.__call__
        arity = 2  # self, event
    else:
        name = getattr(fn, "__qualname__", repr(fn))
        arity = 1
    if not callable(fn):
        return f"hook {fn!r} is not callable"
    if not events:
        return f"hook {name} names no event"
    unknown = [e for e in events if e not in declared]
    if unknown:
        return f"hook {name}: event(s) {unknown} not declared on the bus"
    try:
        signature = inspect.signature(fn)
        signature.bind(*([None] * arity))
    except TypeError:
        return f"hook {name} must accept exactly one positional argument, the event payload"
    except ValueError:
        pass
    return None


def _resolve(found: list[Plugin], bus: Bus, problems: list[str]) -> tuple[Plugin, ...]:
    by_name: dict[str, Plugin] = {}
    for plugin in found:
        if not isinstance(plugin, Plugin):
            problems.append(f"{plugin!r} is not a Plugin")
            continue
        if plugin.name in by_name and by_name[plugin.name] is not plugin:
            problems.append(f"two plugins are named {plugin.name!r}")
            continue
        by_name[plugin.name] = plugin
        problems.extend(plugin.problems(bus))
    for name in sorted(by_name):
        for dep in by_name[name].requires:
            if dep not in by_name:
                chain = " -> ".join([*_chain_to(name, by_name), dep])
                problems.append(f"missing dependency: {chain} ({dep!r} is not available)")
    order, cycles = _topological(by_name)
    problems.extend(f"dependency cycle: {' -> '.join(cycle)}" for cycle in cycles)
    if problems:
        raise PluginError(problems)
    return order


def _edges(plugin: Plugin, by_name: dict[str, Plugin]) -> list[str]:
    return sorted({d for d in (*plugin.requires, *plugin.optional) if d in by_name})


def _chain_to(name: str, by_name: dict[str, Plugin]) -> list[str]:
    """The longest chain of dependants ending at ``name`` (first by name): who needs it."""
    chain = [name]
    while True:
        users = sorted(
            p.name for p in by_name.values() if chain[0] in p.requires and p.name not in chain
        )
        if not users:
            return chain
        chain.insert(0, users[0])


def _topological(by_name: dict[str, Plugin]) -> tuple[tuple[Plugin, ...], list[list[str]]]:
    """Dependencies first, each ready set in name order; and every cycle, each reported once.

    ``graphlib`` finds one cycle per ``prepare()``: its plugins leave the graph and the rest is
    sorted again, until no cycle is left (the plugins of a cycle are then not ordered: the
    cycle is an error).
    """
    graph = {name: _edges(p, by_name) for name, p in by_name.items()}
    cycles: list[list[str]] = []
    while True:
        sorter = graphlib.TopologicalSorter(graph)
        try:
            sorter.prepare()
        except graphlib.CycleError as exc:
            found: list[str] = list(reversed(exc.args[1]))[:-1]  # read as "requires"
            turn = found.index(min(found))  # the same cycle always reads the same way
            cycle = found[turn:] + found[:turn]
            cycles.append([*cycle, cycle[0]])
            graph = {
                name: [d for d in deps if d not in cycle]
                for name, deps in graph.items()
                if name not in cycle
            }
            continue
        break
    order: list[Plugin] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        order += (by_name[name] for name in ready)
        sorter.done(*ready)
    return tuple(order), sorted(cycles)
