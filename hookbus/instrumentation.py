"""The seam tracing, metrics and profilers build on. **Provisional**: names and signatures
may change in a minor release (the changelog will say so); pin hookbus when you use it.

Two halves, both costing nothing while unused:

**Dispatch entries.** A bus runs, for each ``(event, key)`` under each ``hooks_control``
state, an *entry*: a coroutine function of the payload, built once by the bus's entry
factory from the hooks that take part, and called by ``bus.emit`` with nothing in between.
:func:`use_entries` gives a bus another factory (and drops every entry built so far), so an
instrumented bus runs instrumented entries and an ordinary one never tests whether
instrumentation is on. A factory is called as ``factory(event, hooks, names_event)``:
``hooks`` is a tuple of :class:`Chosen` (``info``, the :class:`~hookbus.HookInfo`;
``check``, the hook's dynamic check or ``None``) in call order, ``names_event`` tells
whether payloads carry their event name in ``payload.event``. It returns :data:`NOTHING`
when ``hooks`` is empty, else a new :func:`entry` made of two coroutine functions of the
payload: ``emit`` (returns ``None`` or the :class:`~hookbus.Break` that stopped the hooks)
and ``collect`` (returns :class:`~hookbus.Results`). The bus keys what it caches by entry:
one entry returned for two keys is refused (``TypeError``). To wrap hookbus's own entries, call
:func:`default_entry`; to run the hooks yourself, keep the rules of dispatch with the
helpers below.

>>> import hookbus
>>> from hookbus import instrumentation
>>> calls = []
>>> def counting(event, hooks, names_event):
...     inner = instrumentation.default_entry(event, hooks, names_event)
...     if not hooks:
...         return inner
...     async def emit(payload):
...         calls.append(event)
...         return await inner(payload)
...     return instrumentation.entry(emit, inner.collect)
>>> bus = hookbus.Bus()
>>> previous = instrumentation.use_entries(bus, counting)
>>> _ = instrumentation.use_entries(bus, previous)  # back to what it was

**Scope observers.** :func:`observe_scopes` sets the one observer of every transaction
scope of the process (a :class:`ScopeObserver`: ``moved(tx, old, new)`` at each state move
of a scope, ``ended(tx)`` once its ``async with`` block is left) and returns the one it
replaces, so that it can be put back. With none set, a scope pays a test of ``None`` per
state move.

``hookbus_otel`` is built on this module alone.
"""

from __future__ import annotations

from typing import Any

from ._bus import Bus
from ._dispatch import (
    NOTHING,
    Chosen,
    Entry,
    EntryFactory,
    contradiction,
    endless,
    entry,
    make_entry,
    note,
    returned,
)
from ._exceptions import HookRecursionError
from ._transaction import Observer as ScopeObserver
from ._transaction import _observe

__all__ = [
    "NOTHING",
    "Chosen",
    "Entry",
    "EntryFactory",
    "ScopeObserver",
    "check_payload_event",
    "check_result",
    "default_entry",
    "entry",
    "note_hook",
    "observe_scopes",
    "recursion_error",
    "use_entries",
]

#: hookbus's own entry factory: dispatchers generated for the hooks.
default_entry: EntryFactory = make_entry


def use_entries(bus: Bus, factory: EntryFactory) -> EntryFactory:
    """Build every entry of ``bus`` with ``factory`` from now on; return the factory it
    replaces (pass it back to undo). Every entry built so far is dropped."""
    if not isinstance(bus, Bus):
        raise TypeError(f"use_entries() takes a hookbus.Bus, not {bus!r}")
    if not callable(factory):
        raise TypeError(f"an entry factory is callable, not {factory!r}")
    return bus._use_entries(factory)


def observe_scopes(observer: ScopeObserver | None) -> ScopeObserver | None:
    """Make ``observer`` the observer of every transaction scope from now on (``None``:
    none); return the previous one."""
    return _observe(observer)


def check_payload_event(event: str, payload: Any) -> None:
    """Refuse (``ValueError``) a payload whose ``.event`` is not ``event``, the event
    dispatched: an entry whose payloads name their event calls this before any hook."""
    if payload.event is not event:
        contradiction(event, payload)


def note_hook(exc: BaseException, hook: object, event: str, *, selector: bool = False) -> None:
    """Add to ``exc`` the note naming ``hook`` (or, with ``selector``, its dynamic check)
    and the event, as hookbus's entries do for whatever a hook raises."""
    note(exc, hook, event, selector=selector)


def recursion_error(exc: RecursionError, event: str) -> HookRecursionError:
    """The error to raise (``raise recursion_error(exc, event)``) for a ``RecursionError``
    caught in an entry of ``event``: it names the chain of events of the endless loop."""
    return endless(exc, event)


def check_result(hook: object, event: str, result: object) -> None:
    """Refuse (``TypeError``) what a plain hook returned when it is a coroutine, which would
    never run; call it with every non-``None`` result of a plain hook."""
    returned(hook, event, result)
