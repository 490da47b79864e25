"""The bus: declared events, registered hooks, dispatch and introspection.

Registration does all the work it can (every check, the order, coroutine or not); the index
(``_index.py``) builds, on first use, the entry of each ``(event, key)`` under each
``hooks_control`` state; an entry (``_dispatch.py``) is the coroutine function a dispatch
runs, generated for its hooks. ``emit`` then looks the event and the key up, reads the
``hooks_control`` state only when a hook runs (under a state, the state's view maps the entry
to the state's), and returns the entry's coroutine: awaiting it runs the matching hooks.
Registration changes drop the entries built so far.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Hashable, Iterable
from typing import Any, Final, TypeVar, final, overload

import msgspec

from ._control import current_control
from ._dispatch import NOTHING, Entry, EntryFactory, Results, make_entry, nothing
from ._events import BUILTIN_EVENTS, EventSpec
from ._exceptions import Break, RegistrationError
from ._explain import Explanation, explain
from ._hooks import DEFAULT_CATEGORY, Hook, HookInfo, describe, returns_none
from ._index import Index, specialize
from ._selectors import Selector

__all__ = ["Bus", "Results"]

F = TypeVar("F", bound=Callable[..., Any])
H = TypeVar("H", bound=type[Hook])

# ``ContextVar.get`` through a module-level bound method: the attribute lookup it saves is
# measurable on the hot path (about a tenth of a three-hook dispatch on CPython 3.11).
_get_control: Final = current_control


@final
class Bus:
    """Declared events and the hooks registered on them.

    >>> bus = Bus()
    >>> @bus.hook("server_startup")
    ... async def hello(event):
    ...     print("started")

    ``protected`` names categories that ``hooks_control`` can never disable.
    """

    __slots__ = (
        "_by_event", "_hooks", "_index", "_indexer", "_order", "_protected", "_specs", "_views",
    )  # fmt: skip

    def __init__(self, *, protected: Iterable[str] = ()) -> None:
        self._specs: dict[str, EventSpec] = dict(BUILTIN_EVENTS)
        self._protected = frozenset(protected)
        self._hooks: dict[Hashable, HookInfo] = {}  # fn -> record, in registration order
        self._by_event: dict[str, list[HookInfo]] = {}  # sorted by (priority, order)
        self._order = 0
        self._indexer = Index(self._specs, self._by_event, self._protected, make_entry)
        # What emit reads, owned by the index: event -> lane (table, getkey), every
        # category enabled, and control state -> (that entry -> the entry under the state).
        self._index = self._indexer.tables
        self._views = self._indexer.views

    # -- declaring events ---------------------------------------------------------------

    def declare(self, name: str, payload: type, *, key: str | None = None) -> EventSpec:
        """Declare an application event carrying ``payload`` (a ``msgspec.Struct`` type).

        ``key`` names the payload field the index is keyed by (selectors such as
        ``match_key`` test it); a hookbus payload type brings its own. Declaring the same
        event again with the same payload and key is a no-op; with another, an error.
        """
        if not isinstance(name, str) or not name.isidentifier():
            raise RegistrationError(f"an event name is an identifier, not {name!r}")
        if not (isinstance(payload, type) and issubclass(payload, msgspec.Struct)):
            raise RegistrationError(f"event {name!r}: payload must be a msgspec.Struct type")
        known = self._specs.get(name)
        if known is not None:
            if known.payload is payload and key in (None, known.key):
                return known
            raise RegistrationError(f"event {name!r} is already declared as {known}")
        spec = EventSpec(name, payload, _payload_key(name, payload, key))
        self._specs[name] = spec
        self._indexer.reset()
        return spec

    def events(self) -> tuple[EventSpec, ...]:
        """Every declared event, built-in ones first."""
        return tuple(self._specs.values())

    def _spec(self, name: str) -> EventSpec:
        return self._indexer.spec(name)

    # -- registering hooks --------------------------------------------------------------

    def hook(
        self,
        *events: str,
        select: Selector | None = None,
        category: str | None = None,
        priority: int | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function (coroutine or plain) as a hook on ``events``.

        Hooks run by ``priority`` (lower first, 0 by default), then in registration order;
        ``category`` is ``"default"`` unless given. On a :class:`Hook` class, the arguments
        given override its class attributes.
        """

        def decorator(fn: F) -> F:
            self.register(fn, *events, select=select, category=category, priority=priority)
            return fn

        return decorator

    @overload
    def register(self, fn: H) -> H: ...
    @overload
    def register(
        self,
        fn: Callable[[Any], Any],
        *events: str,
        select: Selector | None = None,
        category: str | None = None,
        priority: int | None = None,
    ) -> HookInfo: ...

    def register(
        self,
        fn: Any,
        *events: str,
        select: Selector | None = None,
        category: str | None = None,
        priority: int | None = None,
    ) -> Any:
        """Register a hook; every check happens here, none at dispatch.

        ``fn`` is a function, or a :class:`Hook` subclass (instantiated once) or instance,
        whose class attributes give the events, selector, category and priority that the
        arguments do not. A ``Hook`` class is returned as is, so that ``@bus.register``
        decorates classes; otherwise the :class:`HookInfo` record is returned.
        """
        hook_class = fn if isinstance(fn, type) and issubclass(fn, Hook) else None
        if hook_class is not None:
            fn = hook_class()
        if isinstance(fn, Hook):
            events = events or type(fn).events
            select = select if select is not None else type(fn).select
            category = category if category is not None else type(fn).category
            priority = priority if priority is not None else type(fn).priority
        category = DEFAULT_CATEGORY if category is None else category
        priority = 0 if priority is None else priority
        info = self._check(fn, events, select, category, priority)
        self._hooks[_identity(fn)] = info
        for event in info.events:
            hooks = self._by_event.setdefault(event, [])
            hooks.append(info)
            hooks.sort(key=_call_order)
        self._indexer.reset()
        return hook_class if hook_class is not None else info

    def _check(
        self,
        fn: Callable[[Any], Any],
        events: tuple[str, ...],
        select: Selector | None,
        category: str,
        priority: int,
    ) -> HookInfo:
        name, is_async = describe(fn)
        if not events:
            raise RegistrationError(f"hook {name} names no event")
        if select is not None and not isinstance(select, Selector):
            raise RegistrationError(f"hook {name}: select must be a Selector, not {select!r}")
        if not isinstance(category, str) or not category:
            raise RegistrationError(f"hook {name}: a category is a non-empty string")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise RegistrationError(f"hook {name}: priority must be an int, not {priority!r}")
        for event in events:
            spec = self._spec(event)
            if select is not None:
                _check_selector(name, select, spec)
        if _identity(fn) in self._hooks:
            raise RegistrationError(f"hook {name} is already registered on this bus")
        self._order += 1
        return HookInfo(
            name, fn, tuple(dict.fromkeys(events)), select, category, priority, self._order,
            is_async, not is_async and returns_none(fn),
        )  # fmt: skip

    def unregister(self, hook: Callable[[Any], Any] | HookInfo) -> None:
        """Remove a hook, given as its function, its ``Hook`` instance or its record.

        For a ``Hook`` class registered with ``@bus.register``, pass the record from
        ``hooks_for``. ``LookupError`` if it is not registered here.
        """
        fn = hook.fn if isinstance(hook, HookInfo) else hook
        info = self._hooks.pop(_identity(fn), None)
        if info is None:
            raise LookupError(f"{hook!r} is not registered on this bus")
        for event in info.events:
            self._by_event[event].remove(info)
        self._indexer.reset()

    def _use_entries(self, factory: EntryFactory) -> EntryFactory:
        """Build every entry from now on with ``factory``; return the one it replaces.

        The seam behind ``hookbus.instrumentation.use_entries``.
        """
        previous, self._indexer.make = self._indexer.make, factory
        self._indexer.reset()
        return previous

    # -- dispatch -----------------------------------------------------------------------

    def emit(self, event: str, payload: Any) -> Coroutine[Any, Any, Break | None]:
        """Run the hooks matching ``event`` and ``payload``, in order: ``await bus.emit(...)``.

        Returns ``None``, or the :class:`Break` a hook raised to stop the others. Any other
        exception propagates, with a note naming the hook and the event. ``payload`` is handed,
        the same object, to every hook; a payload whose ``.event`` is another event is refused
        (``ValueError``) before any hook sees it.

        ``emit`` is a plain function that returns the coroutine of the dispatch (so
        ``asyncio.create_task(bus.emit(...))`` and anyio's ``start_soon(bus.emit, ...)``
        work); an undeclared event or a payload of the wrong type is refused at the call,
        before that coroutine exists. Nothing runs until it is awaited.
        """
        # The hot path: keep it readable whole, and measure any change (benchmarks/). A key
        # seen for the first time, an undeclared event, a payload of the wrong type and an
        # unhashable key leave through the first except clause, a control state or an entry
        # seen for the first time under it through the second: each costs nothing until it
        # is taken. ``getkey`` is None where ``payload.key`` is the key (built-in events,
        # application payloads keyed by a field named key). The tables hold None where no
        # hook runs, and a state only disables hooks: then none runs under any state.
        try:
            table, getkey = self._index[event]
            entry = table[getkey(payload) if getkey is not None else payload.key]
        except (KeyError, AttributeError, TypeError):
            entry = self._indexer.resolve(event, payload)
        if entry is None:
            return nothing()
        control = _get_control()
        if control is not None:
            try:
                entry = self._views[control][entry]
            except KeyError:
                entry = self._indexer.under(control, event, payload, entry)
        return entry(payload)

    async def collect(self, event: str, payload: Any) -> Results:
        """Run the hooks like :meth:`emit` and return their return values in call order.

        ``results.broken`` is the ``Break`` that stopped the hooks, or ``None``.
        """
        return await self._entry(event, payload).collect(payload)

    def _entry(self, event: str, payload: Any) -> Entry:
        """The entry a dispatch of ``event`` for ``payload`` runs here and now (as ``emit``
        finds it)."""
        try:
            table, getkey = self._index[event]
            entry = table[getkey(payload) if getkey is not None else payload.key]
        except (KeyError, AttributeError, TypeError):
            entry = self._indexer.resolve(event, payload)
        control = _get_control()
        if entry is None:
            return NOTHING
        if control is None:
            return entry
        try:
            return self._views[control][entry]
        except KeyError:
            return self._indexer.under(control, event, payload, entry)

    # -- introspection ------------------------------------------------------------------

    def hooks_for(self, event: str, key: Hashable = None) -> tuple[HookInfo, ...]:
        """The hooks a dispatch of ``event`` for ``key`` would consider, in call order.

        Under the ``hooks_control`` state in force here. Hooks with a dynamic part (``where``)
        are included: they run when their check passes.
        """
        spec = self._spec(event)
        control = current_control()
        return tuple(
            info
            for info in self._by_event.get(event, ())
            if (control is None or control.enabled(info.category, self._protected))
            and (info.select is None or specialize(info, spec, key) is not False)
        )

    def explain(self, event: str, key: Hashable = None, payload: Any = None) -> Explanation:
        """Which hooks a dispatch of ``event`` for ``key`` would run, in order, and why not
        the others (their selector, their category disabled by ``hooks_control`` here).

        Hooks with a dynamic check are decided at dispatch, or now if ``payload`` is given
        (its key is used when ``key`` is not). ``str()`` of the answer is a table.
        """
        spec = self._spec(event)
        return explain(spec, self._by_event.get(event, ()), self._protected, key, payload)

    def registered(self) -> tuple[HookInfo, ...]:
        """Every registered hook, in registration order."""
        return tuple(self._hooks.values())

    def listing(self) -> list[tuple[str, str, HookInfo]]:
        """Rows ``(event, keys, hook)`` for every event with hooks, hooks in call order.

        ``keys`` is the static part of the hook's selector on that event (``*``: any key).
        """
        rows = []
        for event, hooks in self._by_event.items():
            spec = self._specs[event]
            for info in hooks:
                keys = None if info.select is None else info.select.keys(spec)
                shown = "*" if keys is None else ",".join(sorted(map(str, keys)))
                if info.select is not None and _has_dynamic(info.select, spec, keys):
                    shown += " (where)"
                rows.append((event, shown, info))
        return rows


if hasattr(inspect, "markcoroutinefunction"):  # Python 3.12+: emit returns a coroutine
    inspect.markcoroutinefunction(Bus.emit)


def _identity(fn: object) -> Hashable:
    """What makes two registrations the same hook: equality, so that ``obj.method`` (a new
    bound method at each access) finds its registration; identity for unhashable callables.
    """
    try:
        hash(fn)
    except TypeError:
        return id(fn)
    return fn


def _check_selector(name: str, select: Selector, spec: EventSpec) -> None:
    """Refuse, at registration, a selector that cannot work on ``spec``."""
    keys = select.keys(spec)
    if keys == frozenset():
        raise RegistrationError(f"hook {name}: {select!r} can never match {spec.name!r}")
    probe = next(iter(keys), None) if keys else None
    try:
        result = select.specialize(spec, probe)
    except Exception as exc:
        raise RegistrationError(f"hook {name}: {select!r} fails on {spec.name!r}: {exc!r}") from exc
    if not (isinstance(result, bool) or callable(result)):
        raise RegistrationError(
            f"hook {name}: {select!r}.specialize() returned {result!r}; it must return "
            "True, False or a predicate"
        )


def _call_order(info: HookInfo) -> tuple[int, int]:
    return info.priority, info.order


def _payload_key(name: str, payload: type, key: str | None) -> str | None:
    """Settle which field keys ``payload``; the class itself is left as it is."""
    builtin = next((s for s in BUILTIN_EVENTS.values() if s.payload is payload), None)
    if builtin is not None and key in (None, builtin.key):
        return builtin.key
    fields: tuple[str, ...] = payload.__struct_fields__  # type: ignore[attr-defined]
    if key is None:
        return "key" if "key" in fields else None  # a field named key keys the event
    if key not in fields:
        raise RegistrationError(f"event {name!r}: {payload.__qualname__} has no field {key!r}")
    if builtin is not None:
        raise RegistrationError(
            f"event {name!r}: {payload.__qualname__} is keyed by {builtin.key!r}"
        )
    return key


def _has_dynamic(select: Selector, spec: EventSpec, keys: frozenset[Hashable] | None) -> bool:
    probe = next(iter(keys), None) if keys else None
    return callable(select.specialize(spec, probe))
