"""The dispatch index of a bus: per event, key -> entry, for each ``hooks_control`` state.

**Keys, inverted.** For an event, the keys some selector names (``is_instance("Person")``
names ``"Person"``; see ``Selector.mentions``) each get their own entry, built on first use;
every other key shares one entry, the event's *other* entry: the hooks whose selectors name
no key, in call order. So any key resolves in constant time, however many keys an
application dispatches and however many hooks the event has. A selector that cannot say
which keys it singles out is asked per dispatch for keys no selector names.

**Lanes.** What ``Bus.emit`` reads for an event is its *lane*: ``(table, getkey)``. The
table is a plain ``dict`` key -> entry, ``None`` where no hook runs (the entry ``NOTHING``:
``Bus.emit`` tests it in one instruction); ``getkey`` is ``None`` when the payload's ``key``
attribute is its key (``Bus.emit`` then reads ``payload.key``), else a C callable giving
the key: ``operator.attrgetter(field)`` for an application payload keyed by a field of
another name, ``type`` for an unkeyed payload without a ``key`` attribute (its table holds
the one entry under the payload type, so another type misses and goes through the checks
of the slow path). So every declared field keys its event at about the speed of ``key``,
and the user's class is never touched.

**Tables.** Keys no selector names are added to a table, all pointing at the other entry,
up to ``MAX_UNNAMED_KEYS``; past that the table becomes an ``_OpenTable`` that answers the
other entry for any key it does not hold, from C (no Python call, nothing more stored):
memory stays bounded and a fresh key costs about what a known one does.

**Control states.** Under a ``hooks_control`` state a bus runs a subset of the hooks it
runs with every category enabled: a dispatch that finds no hook in the tables finds none
under any state, and ``Bus.emit`` answers it before reading the state. Otherwise the
state's *view* maps the entry found in the tables to the entry under that state: two more
subscripts (the state, then the entry; each entry the tables hold stands for one event and
one key, or the event's other keys, and an entry factory that returns one entry for two of
them is refused). A state changes a bus's entries only through the
categories of its hooks, so states are reduced to their *canonical form* on this bus (the
set of its hooks' categories they disable) and the states of one form share one view; the
form that disables nothing maps each entry to itself. The map from states to views and the
forms are both bounded (oldest dropped first), so an application opening ever new states
cannot grow memory without end. Reducing a state is where a category named by
``hooks_control`` that no hook of this bus has is reported (``UnknownCategoryWarning``, once
per name).

**Payload keys.** hookbus's payload types alias ``key`` to their key field, and an
application type whose key field is named ``key`` has it; no other class is given one.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Hashable
from functools import partial
from itertools import repeat
from operator import attrgetter
from typing import Any, Final, final

from ._control import ALLOW_ALL, Control
from ._dispatch import NOTHING, Chosen, Entry, EntryFactory
from ._events import BUILTIN_EVENTS, EventSpec
from ._exceptions import UnknownCategoryWarning, UnknownEventError
from ._hooks import HookInfo
from ._selectors import Predicate, Selector

__all__ = ["MAX_UNNAMED_KEYS", "Index"]

#: Keys no selector names that a table holds before it becomes an ``_OpenTable``.
MAX_UNNAMED_KEYS: Final = 1024
#: Control states mapped to their tables (the oldest mapping is dropped past it).
MAX_STATES: Final = 256
#: Canonical forms of control states with tables of their own.
MAX_FORMS: Final = 32
_NAMED_PAYLOADS: Final = tuple({spec.payload for spec in BUILTIN_EVENTS.values()})
_MISSING: Final = object()
_BASE: Final[frozenset[str]] = frozenset()  # the form of "no state": every category enabled

#: key -> entry; ``None``: no hook runs (the entry ``NOTHING``).
Table = dict[Hashable, Entry | None]
#: What ``Bus.emit`` reads for an event: its table, and how to get a payload's key (``None``:
#: ``payload.key``).
Lane = tuple[Table, Callable[[Any], Hashable] | None]


class _OpenTable(dict):  # type: ignore[type-arg]
    """A table that answers its event's other entry for any key it does not hold.

    Each instance gets a subclass whose ``__missing__`` is a C callable (``next`` on a
    ``repeat`` of the entry): a subscript of a key it does not hold makes no Python call.
    """

    __slots__ = ()


def _held(entry: Entry) -> Entry | None:
    """What a table holds for ``entry``: ``None`` for ``NOTHING`` (``Bus.emit`` tests it
    with one instruction)."""
    return None if entry is NOTHING else entry


def _open_table(entries: Table, other: Entry | None) -> Table:
    missing = staticmethod(partial(next, repeat(other)))
    cls = type("_OpenTable", (_OpenTable,), {"__slots__": (), "__missing__": missing})
    table: Table = cls(entries)
    return table


@final
class _Unnamed:
    """Stands for any key no selector names, when asking a selector about such keys."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<any other key>"


_UNNAMED: Final = _Unnamed()


@final
class _PerKey:
    """The check of a selector that cannot say which keys it singles out: asked per dispatch."""

    __slots__ = ("field", "select", "spec")

    def __init__(self, select: Selector, spec: EventSpec) -> None:
        self.select, self.spec, self.field = select, spec, spec.key

    def __call__(self, payload: Any) -> bool:
        key = None if self.field is None else getattr(payload, self.field)
        decided = self.select.specialize(self.spec, key)
        return decided if isinstance(decided, bool) else bool(decided(payload))


@final
class _Plan:
    """The entries of one event under one canonical control form, built on first use.

    ``owners``, given for the form of no state, records which key each entry was built for
    (``_UNNAMED``: the other entry), so that an entry factory returning one entry for two of
    them is refused: the views of control states are keyed by those entries.
    """

    __slots__ = (
        "built", "getkey", "hooks", "make", "named", "other", "owners", "spec", "table", "unnamed",
    )  # fmt: skip

    def __init__(
        self,
        spec: EventSpec,
        hooks: tuple[HookInfo, ...],
        make: EntryFactory,
        owners: dict[Entry, tuple[str, Hashable]] | None,
    ) -> None:
        self.spec, self.hooks, self.make, self.owners = spec, hooks, make, owners
        self.getkey = _getkey(spec)
        named: set[Hashable] = set()
        for info in hooks:
            mentions = None if info.select is None else info.select.mentions(spec)
            named.update(mentions or ())
        self.named = frozenset(named)
        self.built: dict[Hashable, Entry] = {}  # the entries of named keys
        self.other: Entry | None = None
        self.table: Table = {}  # the lane's table (the form of no state only)
        self.unnamed = 0

    def find(self, key: Hashable) -> Entry:
        """The entry of ``key`` (hashable), built on first use."""
        if key in self.named:
            entry = self.built.get(key)
            if entry is None:
                entry = self.built[key] = self._make(key, self._build(key))
            return entry
        if self.other is None:
            self.other = self._make(_UNNAMED, self._build_other())
        return self.other

    def entry(self, key: Hashable) -> tuple[Entry | None, bool]:
        """What the table holds for ``key`` once it is added, and whether the table was
        replaced to hold it."""
        held = _held(self.find(key))
        if key in self.named:
            self.table[key] = held
        elif isinstance(self.table, _OpenTable):  # it answers any key no selector names
            pass
        elif self.unnamed < MAX_UNNAMED_KEYS:
            self.unnamed += 1
            self.table[key] = held
        else:
            self.table = _open_table({k: _held(self.find(k)) for k in self.named}, held)
            return held, True
        return held, False

    def lane(self) -> Lane:
        """What ``Bus.emit`` reads for this event (see the module docstring)."""
        if self.getkey is type:  # unkeyed, no key attribute: the one entry, by payload type
            return {self.spec.payload: self.table.get(None)}, type
        return self.table, self.getkey

    def _build(self, key: Hashable) -> list[Chosen]:
        chosen = []
        for info in self.hooks:
            check = True if info.select is None else specialize(info, self.spec, key)
            if check is not False:
                chosen.append(Chosen(info, None if check is True else check))
        return chosen

    def _build_other(self) -> list[Chosen]:
        chosen = []
        for info in self.hooks:
            check: bool | Predicate = True
            if info.select is not None:
                if info.select.mentions(self.spec) is None:
                    check = _PerKey(info.select, self.spec)
                else:
                    try:
                        check = specialize(info, self.spec, _UNNAMED)
                    except Exception:  # a selector that cannot answer for "any key"
                        check = _PerKey(info.select, self.spec)
            if check is not False:
                chosen.append(Chosen(info, None if check is True else check))
        return chosen

    def _make(self, key: Hashable, chosen: list[Chosen]) -> Entry:
        names_event = issubclass(self.spec.payload, _NAMED_PAYLOADS)
        entry = self.make(self.spec.name, tuple(chosen), names_event)
        if self.owners is not None and entry is not NOTHING:
            owner = self.owners.setdefault(entry, (self.spec.name, key))
            if owner != (self.spec.name, key):
                raise TypeError(
                    f"the entry factory {self.make!r} returned for event {self.spec.name!r} "
                    f"and key {key!r} the entry it returned for {owner[0]!r} and "
                    f"{owner[1]!r}: a factory makes a new entry per call (or returns NOTHING)"
                )
        return entry


@final
class Index:
    """A bus's entries: the tables and views ``Bus.emit`` reads, and the slow path that
    fills them."""

    __slots__ = (
        "_owners", "_plans", "_warned", "by_event", "categories", "form_of", "make",
        "protected", "specs", "tables", "views",
    )  # fmt: skip

    def __init__(
        self,
        specs: dict[str, EventSpec],
        by_event: dict[str, list[HookInfo]],
        protected: frozenset[str],
        make: EntryFactory,
    ) -> None:
        self.specs, self.by_event, self.protected, self.make = specs, by_event, protected, make
        #: event -> lane, every category enabled (``Bus.emit``'s first subscript)
        self.tables: dict[str, Lane] = {}
        #: control state -> (entry with every category enabled -> entry under that state),
        #: one mapping shared by the states of one canonical form
        self.views: dict[Control, dict[Entry, Entry]] = {}
        self.form_of: dict[Control, frozenset[str]] = {}
        self._owners: dict[Entry, tuple[str, Hashable]] = {}
        self._plans: dict[frozenset[str], tuple[dict[str, _Plan], dict[Entry, Entry]]] = {}
        self._warned: set[str] = set()
        self.categories: frozenset[str] = frozenset()
        self.reset()

    def reset(self) -> None:
        """Drop every entry: called on every registration change and factory swap."""
        self.tables.clear()
        self.views.clear()
        self.form_of.clear()
        self._owners = {}
        self._plans = {_BASE: ({}, {})}
        self.categories = frozenset(
            info.category for hooks in self.by_event.values() for info in hooks
        )

    # -- the slow path ------------------------------------------------------------------

    def resolve(self, event: str, payload: Any) -> Entry | None:
        """What the tables ``Bus.emit`` reads hold for a dispatch they could not answer:
        the entry with every category enabled, ``None`` when no hook runs.

        Taken for a key seen for the first time, a payload of a subclass of its event's type
        (of an unkeyed event without a ``key`` attribute), and every mistake: an undeclared
        event, a payload of another type, an unhashable key.
        """
        plan = self._plan(_BASE, event)
        if not isinstance(payload, plan.spec.payload):
            raise TypeError(
                f"event {event!r} carries {plan.spec.payload.__qualname__} payloads, "
                f"not {type(payload).__qualname__}"
            )
        field = plan.spec.key
        key = None if field is None else getattr(payload, field)
        try:
            held = key in plan.table
        except TypeError:
            raise TypeError(
                f"event {event!r}: the key of this {plan.spec.payload.__qualname__} "
                f"({field} = {key!r}) is unhashable; keys index dispatches and must be "
                f"hashable (a str, an int, a tuple of those)"
            ) from None
        if held:
            return plan.table[key]
        found, replaced = plan.entry(key)
        if replaced or event not in self.tables:
            self.tables[event] = plan.lane()
        return found

    def under(self, control: Control, event: str, payload: Any, entry: Entry) -> Entry:
        """The entry under ``control`` of a dispatch whose entry, every category enabled, is
        ``entry`` (never ``NOTHING``), for a state or an entry the views do not hold yet."""
        known = self.form_of.get(control)
        form = self._form(control) if known is None else known
        field = self.specs[event].key
        found = self._plan(form, event).find(None if field is None else getattr(payload, field))
        self._plans[form][1][entry] = found
        return found

    def _plan(self, form: frozenset[str], event: str) -> _Plan:
        plans = self._plans[form][0]
        plan = plans.get(event)
        if plan is None:
            spec = self.spec(event)
            every = self.by_event.get(event, ())
            hooks = tuple(info for info in every if info.category not in form)
            owners = None if form else self._owners  # the base form's entries key the views
            plan = plans[event] = _Plan(spec, hooks, self.make, owners)
        return plan

    def spec(self, name: str) -> EventSpec:
        """The declared event ``name``; ``UnknownEventError`` with the closest names."""
        spec = self.specs.get(name) if isinstance(name, str) else None
        if spec is None:
            close = difflib.get_close_matches(str(name), self.specs, n=3, cutoff=0.6)
            raise UnknownEventError(str(name), tuple(close))
        return spec

    def _form(self, control: Control) -> frozenset[str]:
        """The canonical form of ``control`` on this bus; maps the state to its view."""
        form = frozenset(c for c in self.categories if not control.enabled(c, self.protected))
        self._report(control)
        if form not in self._plans:
            if len(self._plans) >= MAX_FORMS:  # drop the oldest form but the base one
                oldest = next(f for f in self._plans if f)
                del self._plans[oldest]
                for stale in [c for c, f in self.form_of.items() if f == oldest]:
                    del self.views[stale], self.form_of[stale]
            self._plans[form] = ({}, {})
        if len(self.views) >= MAX_STATES:
            stale = next(iter(self.views))
            del self.views[stale], self.form_of[stale]
        self.views[control] = self._plans[form][1]
        self.form_of[control] = form
        return form

    def _report(self, control: Control) -> None:
        """Warn, once per name, about categories of ``control`` that do nothing on this bus."""
        for name in sorted(control.categories - self._warned):
            if name in self.protected and control.mode is ALLOW_ALL:
                message = (
                    f"hooks_control(ALLOW_ALL, {name!r}): {name!r} is protected on this bus, "
                    "its hooks stay enabled"
                )
            elif name not in self.categories and name not in self.protected:
                # A name close to a category of this bus's hooks is most likely a typo; one
                # close to none is taken as meant for hooks registered elsewhere or later.
                close = difflib.get_close_matches(name, self.categories, n=3, cutoff=0.6)
                if not close:
                    continue
                message = (
                    f"hooks_control names category {name!r}, which no hook on this bus has; "
                    f"did you mean {' or '.join(map(repr, close))}?"
                )
            else:
                continue
            if len(self._warned) >= 1024:
                self._warned.clear()
            self._warned.add(name)
            warnings.warn(message, UnknownCategoryWarning, stacklevel=5)  # the emit


def _getkey(spec: EventSpec) -> Callable[[Any], Hashable] | None:
    """How ``Bus.emit`` gets the key of ``spec``'s payloads: ``None`` when ``payload.key`` is
    it, else a C callable (``attrgetter`` of the key field; ``type`` for unkeyed payloads)."""
    alias = getattr(spec.payload, "key", _MISSING)
    if spec.key is None:
        return None if alias is None else type
    if alias is getattr(spec.payload, spec.key, _MISSING):
        return None
    return attrgetter(spec.key)


def specialize(info: HookInfo, spec: EventSpec, key: Hashable) -> bool | Predicate:
    """What ``info``'s selector leaves for ``key``: always, never, or a check."""
    assert info.select is not None
    result = info.select.specialize(spec, key)
    if isinstance(result, bool) or callable(result):
        return result
    raise TypeError(
        f"selector {info.select!r} of hook {info.name} returned {result!r} for {key!r} on "
        f"{spec.name!r}: specialize() must return True, False or a predicate"
    )
