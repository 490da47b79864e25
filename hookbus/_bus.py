"""The bus: declared events, registered hooks, the dispatch index and the hot path.

All the work is done at registration and on the first dispatch of an ``(event, key)``: the
index maps each event to its hooks (unkeyed events) or to a dict of key -> hooks (keyed
events), each entry an immutable tuple in call order, with the static part of every selector
already folded away. ``emit`` is then a dictionary lookup or two and the awaits of the
matching hooks. Registration changes rebuild the entries of the events they touch.

Three shapes of entry keep the common loops bare: a plain ``tuple`` of coroutine functions,
a ``_SyncHooks`` tuple of plain functions, and a ``_MixedHooks`` tuple of
``(fn, check, is_async)`` triples for everything else (dynamic selectors, mixed kinds).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Final, TypeVar, final, overload

import msgspec

from ._control import Control, current_control, protect
from ._events import BUILTIN_EVENTS, EventSpec
from ._exceptions import Break, HookRecursionError, RegistrationError, UnknownEventError
from ._hooks import DEFAULT_CATEGORY, Hook, HookInfo, describe, hook_name
from ._selectors import Predicate, Selector

__all__ = ["Bus", "Results"]

F = TypeVar("F", bound=Callable[..., Any])
H = TypeVar("H", bound=type[Hook])

# Keys seen per keyed event beyond which new keys are resolved without being cached, so that
# an application keying events by an unbounded value cannot grow the index without end.
_MAX_CACHED_KEYS: Final = 4096

# ``ContextVar.get`` through a module-level bound method: the attribute lookup it saves is
# measurable on the hot path (about a tenth of a three-hook dispatch on CPython 3.11).
_get_control: Final = current_control


@final
class _SyncHooks(tuple):  # type: ignore[type-arg]
    """An index entry of plain functions only, none with a dynamic check."""

    __slots__ = ()


@final
class _MixedHooks(tuple):  # type: ignore[type-arg]
    """An index entry of ``(fn, check, is_async)`` triples."""

    __slots__ = ()


_Entry = tuple[Any, ...]


@final
class Results(list[Any]):
    """The hooks' return values in call order; ``broken`` is the ``Break`` that stopped them."""

    __slots__ = ("broken",)

    def __init__(self) -> None:
        super().__init__()
        self.broken: Break | None = None


@final
class Bus:
    """Declared events and the hooks registered on them.

    >>> bus = Bus()
    >>> @bus.hook("server_startup")
    ... async def hello(event):
    ...     print("started")

    ``protected`` names categories that ``hooks_control`` can never disable.
    """

    __slots__ = ("_by_event", "_hooks", "_index", "_order", "_protected", "_specs", "_views")

    def __init__(self, *, protected: Iterable[str] = ()) -> None:
        self._specs: dict[str, EventSpec] = dict(BUILTIN_EVENTS)
        self._protected = frozenset(protected)
        protect(self._protected)
        self._hooks: dict[Hashable, HookInfo] = {}  # fn -> record, in registration order
        self._by_event: dict[str, list[HookInfo]] = {}  # sorted by (priority, order)
        self._order = 0
        # event -> hooks (unkeyed) or {key: hooks} (keyed), with every category enabled
        self._index: dict[str, Any] = {}
        # control state -> the same shape as _index, filled on first use
        self._views: dict[Control, dict[str, dict[Hashable, _Entry]]] = {}
        for name in self._specs:
            self._reset(name)

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
        self._reset(name)
        return spec

    def events(self) -> tuple[EventSpec, ...]:
        """Every declared event, built-in ones first."""
        return tuple(self._specs.values())

    def _spec(self, name: str) -> EventSpec:
        spec = self._specs.get(name)
        if spec is None:
            close = difflib.get_close_matches(str(name), self._specs, n=3, cutoff=0.6)
            raise UnknownEventError(str(name), tuple(close))
        return spec

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
            self._reset(event)
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
            is_async,
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
            self._reset(event)

    # -- the index ----------------------------------------------------------------------

    def _reset(self, event: str) -> None:
        """Drop what was cached for ``event``: called on every registration change."""
        self._index[event] = {}
        self._views.clear()

    def _build(self, spec: EventSpec, key: Hashable, control: Control | None) -> _Entry:
        """The entry for ``(event, key)`` under ``control``: the heart of the index."""
        chosen: list[tuple[Callable[[Any], Any], Predicate | None, bool]] = []
        for info in self._by_event.get(spec.name, ()):
            check = self._takes(info, spec, key, control)
            if check is not False:
                chosen.append((info.fn, None if check is True else check, info.is_async))
        if all(check is None for _, check, _ in chosen):
            if all(is_async for _, _, is_async in chosen):
                return tuple(fn for fn, _, _ in chosen)
            if not any(is_async for _, _, is_async in chosen):
                return _SyncHooks(fn for fn, _, _ in chosen)
        return _MixedHooks(chosen)

    def _takes(
        self, info: HookInfo, spec: EventSpec, key: Hashable, control: Control | None
    ) -> bool | Predicate:
        """Whether ``info`` runs for ``key`` under ``control``: always, never, or a check."""
        if control is not None and not control.enabled(info.category, self._protected):
            return False
        return True if info.select is None else _specialize(info, spec, key)

    def _fill(self, event: str, key: Hashable) -> _Entry:
        """Build and cache the entry of a key seen for the first time."""
        entry = self._build(self._specs[event], key, None)
        table = self._index[event]
        if len(table) < _MAX_CACHED_KEYS:
            table[key] = entry
        return entry

    def _resolve(self, control: Control | None, event: str, payload: Any) -> _Entry:
        """The entry for a dispatch, by the slow path (``collect``, controlled dispatch)."""
        spec = self._spec(event)
        if not isinstance(payload, spec.payload):
            raise TypeError(
                f"event {event!r} carries {spec.payload.__qualname__} payloads, "
                f"not {type(payload).__qualname__}"
            )
        key: Hashable = payload.key  # type: ignore[attr-defined]  # every payload has one
        if control is None:
            found = self._index[event].get(key)
            return self._fill(event, key) if found is None else found
        table = self._views.setdefault(control, {}).setdefault(event, {})
        entry = table.get(key)
        if entry is None:
            entry = self._build(spec, key, control)
            if len(table) < _MAX_CACHED_KEYS:
                table[key] = entry
        return entry

    # -- dispatch -----------------------------------------------------------------------

    async def emit(self, event: str, payload: Any) -> Break | None:
        """Run the hooks matching ``event`` and ``payload``, in order.

        Returns ``None``, or the :class:`Break` a hook raised to stop the others. Any other
        exception propagates, with a note naming the hook and the event. ``payload`` is handed,
        the same object, to every hook.
        """
        # The hot path: keep it readable whole, and measure any change (benchmarks/).
        # A key seen for the first time, an undeclared event or a payload of the wrong type
        # all leave through the except clause, which costs nothing until it is taken.
        try:
            hooks = self._index[event][payload.key]
        except (KeyError, AttributeError):
            hooks = self._resolve(None, event, payload)
        if not hooks:
            return None
        control = _get_control()
        if control is not None:
            try:
                hooks = self._views[control][event][payload.key]
            except KeyError:
                hooks = self._resolve(control, event, payload)
        try:
            if type(hooks) is tuple:
                for fn in hooks:
                    await fn(payload)
            elif type(hooks) is _SyncHooks:
                for fn in hooks:
                    fn(payload)
            else:
                for fn, check, is_async in hooks:
                    if check is None or check(payload):
                        if is_async:
                            await fn(payload)
                        else:
                            fn(payload)
        except Break as broken:
            return broken
        except RecursionError as exc:
            raise _endless(exc, event)  # noqa: B904  (chained inside)
        except Exception as exc:
            exc.add_note(f"raised by hook {hook_name(fn)} on event {event!r}")
            raise
        return None

    async def collect(self, event: str, payload: Any) -> Results:
        """Run the hooks like :meth:`emit` and return their return values in call order.

        ``results.broken`` is the ``Break`` that stopped the hooks, or ``None``.
        """
        hooks = self._resolve(current_control(), event, payload)
        results = Results()
        fn = None
        try:
            for fn, check, is_async in _triples(hooks):
                if check is None or check(payload):
                    result = fn(payload)
                    results.append(await result if is_async else result)
        except Break as broken:
            results.broken = broken
        except RecursionError as exc:
            raise _endless(exc, event)  # noqa: B904  (chained inside)
        except Exception as exc:
            exc.add_note(f"raised by hook {hook_name(fn)} on event {event!r}")
            raise
        return results

    # -- introspection ------------------------------------------------------------------

    def hooks_for(self, event: str, key: Hashable = None) -> tuple[HookInfo, ...]:
        """The hooks a dispatch of ``event`` for ``key`` would consider, in call order.

        Under the ``hooks_control`` state in force here. Hooks with a dynamic part (``where``)
        are included: they run when their check passes.
        """
        spec = self._spec(event)
        control = current_control()
        return tuple(
            info for info in self._by_event.get(event, ()) if self._takes(info, spec, key, control)
        )

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


def _identity(fn: object) -> Hashable:
    """What makes two registrations the same hook: equality, so that ``obj.method`` (a new
    bound method at each access) finds its registration; identity for unhashable callables.
    """
    try:
        hash(fn)
    except TypeError:
        return id(fn)
    return fn


def _specialize(info: HookInfo, spec: EventSpec, key: Hashable) -> bool | Predicate:
    assert info.select is not None
    result = info.select.specialize(spec, key)
    if isinstance(result, bool) or callable(result):
        return result
    raise TypeError(
        f"selector {info.select!r} of hook {info.name} returned {result!r} for {key!r} on "
        f"{spec.name!r}: specialize() must return True, False or a predicate"
    )


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
    """Settle which field keys ``payload``, aliasing it as ``payload.key`` for dispatch."""
    builtin = next((s for s in BUILTIN_EVENTS.values() if s.payload is payload), None)
    if builtin is not None and key in (None, builtin.key):
        return builtin.key
    fields: tuple[str, ...] = payload.__struct_fields__  # type: ignore[attr-defined]
    if key is None:
        if "key" in fields:  # a field named key keys the event, declared or not
            return "key"
        if getattr(payload, "key", None) is not None:
            raise RegistrationError(
                f"event {name!r}: {payload.__qualname__} has a 'key' attribute that is not a "
                f"field; hookbus reads payload.key to index dispatches"
            )
        payload.key = None  # type: ignore[attr-defined]
        return None
    if key not in fields:
        raise RegistrationError(f"event {name!r}: {payload.__qualname__} has no field {key!r}")
    if builtin is not None:
        raise RegistrationError(
            f"event {name!r}: {payload.__qualname__} is keyed by {builtin.key!r}"
        )
    slot = getattr(payload, key)
    current = getattr(payload, "key", None)
    if key != "key" and current is not slot:
        if current is not None:
            raise RegistrationError(
                f"event {name!r}: {payload.__qualname__} already has a 'key' attribute; "
                f"key it by a field named 'key' or rename that attribute"
            )
        # The same slot descriptor under the name the dispatcher reads: as fast as the field.
        payload.key = slot  # type: ignore[attr-defined]
    return key


def _triples(hooks: _Entry) -> Iterable[tuple[Any, Predicate | None, bool]]:
    if type(hooks) is tuple:
        return ((fn, None, True) for fn in hooks)
    if type(hooks) is _SyncHooks:
        return ((fn, None, False) for fn in hooks)
    return hooks


def _has_dynamic(select: Selector, spec: EventSpec, keys: frozenset[Hashable] | None) -> bool:
    probe = next(iter(keys), None) if keys else None
    return callable(select.specialize(spec, probe))


def _endless(exc: RecursionError, event: str) -> HookRecursionError:
    """Turn the interpreter's recursion limit, caught as it unwinds, into the hooks' story.

    The innermost dispatch makes the ``HookRecursionError``; each enclosing one prepends its
    event to the chain. Nothing is counted on the way in, so the hot path pays nothing.
    """
    if isinstance(exc, HookRecursionError):
        return exc.extend(event)
    error = HookRecursionError((event,))
    error.__cause__ = exc
    return error
