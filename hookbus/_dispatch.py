"""Index entries: what one dispatch of an ``(event, key)`` runs, built once per entry.

An entry is the ordered hooks of an ``(event, key)`` under one ``hooks_control`` state, and
its own way of running them: ``await entry.emit(event, payload)`` and ``await
entry.collect(event, payload)``. Every entry is a tuple (empty: nothing to run, so a miss
costs one truth test), and its class is chosen when it is built, by its shape:

- ``_Awaited``: coroutine functions only, no dynamic check, on an event whose payload names
  its event (``payload.event``), which is checked against the dispatch first;
- ``_Called``: plain functions only, likewise, each of which returns nothing by its code
  (``HookInfo.returns_none``, read at registration), so nothing checks what they return;
- ``_CalledChecked``: plain functions only, likewise, some of which may return something:
  each result is checked (a coroutine returned would never run);
- ``_AwaitedAny``: coroutine functions only, no dynamic check, any other payload;
- ``_Checked``: ``(fn, check, is_async)`` triples: dynamic checks, mixed kinds, and plain
  functions on payloads that do not name their event.

``Bus.emit`` runs ``_Awaited``, ``_Called`` and ``_AwaitedAny`` inline (the loop of their
``emit`` written in place, because awaiting one more coroutine per dispatch costs about a
tenth of a three-hook dispatch, and ``emit`` must stay a coroutine function: web frameworks
test that before awaiting a callable) and awaits ``entry.emit`` for any other class of
entry. That is the seam:

**Entry factories.** A bus builds its entries with ``make_entry(event, hooks, names_event)``
(the index of a bus keeps it; ``bus._use_entries(factory)`` swaps it and drops every entry
built so far). ``hooks`` is a tuple of :class:`Chosen` in call order;
``names_event`` says whether the payload carries its event name in ``payload.event``. A
factory returns a tuple subclass of :class:`Entry` with ``emit`` and ``collect`` coroutine
methods, empty when nothing runs. Instrumentation (spans, metrics) plugs in there: its
factory builds instrumented entries, ``Bus.emit`` awaits their ``emit``, and with the
default factory nothing on the hot path tests whether instrumentation is on. A generated
dispatcher plugs in the same way. Private for now: the factory signature may still change.

Rules every entry keeps: a ``Break`` stops the remaining hooks and is returned (``emit``)
or put on ``results.broken`` (``collect``); any other exception propagates with a note
naming the hook (or its selector) and the event; the interpreter's recursion limit, caught
as it unwinds, becomes a ``HookRecursionError`` naming the chain of events (nothing is
counted on the way in); a plain hook that returns a coroutine is refused (it would never
run); a payload whose ``.event`` contradicts the dispatch never reaches a hook.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, ClassVar, Final, NamedTuple, final

from ._exceptions import Break, HookRecursionError
from ._hooks import HookInfo, hook_name
from ._selectors import Predicate

__all__ = ["Chosen", "Entry", "EntryFactory", "Results", "make_entry"]


@final
class Results(list[Any]):
    """The hooks' return values in call order; ``broken`` is the ``Break`` that stopped them."""

    __slots__ = ("broken",)

    def __init__(self) -> None:
        super().__init__()
        self.broken: Break | None = None


class Chosen(NamedTuple):
    """A hook that takes part in an entry, and its dynamic check (``None``: always runs)."""

    info: HookInfo
    check: Predicate | None


class Entry(tuple):  # type: ignore[type-arg]
    """Base class of index entries: a tuple of what runs, and how it runs."""

    __slots__ = ()

    async def emit(self, event: str, payload: Any) -> Break | None:
        """Run the hooks for ``payload``; return the ``Break`` that stopped them, or ``None``."""
        raise NotImplementedError

    async def collect(self, event: str, payload: Any) -> Results:
        """Run the hooks for ``payload`` and return their results in call order."""
        raise NotImplementedError


EntryFactory = Callable[[str, tuple[Chosen, ...], bool], Entry]


class _AwaitedAny(Entry):
    """Coroutine functions, no dynamic check, on a payload that does not name its event."""

    __slots__ = ()

    async def emit(self, event: str, payload: Any) -> Break | None:
        # Bus.emit runs a copy of this loop inline: keep the two alike.
        try:
            for fn in self:
                await fn(payload)
        except Break as broken:
            return broken
        except RecursionError as exc:
            raise endless(exc, event)  # noqa: B904  (chained inside)
        except Exception as exc:
            note(exc, fn, event)
            raise
        return None

    async def collect(self, event: str, payload: Any) -> Results:
        results = Results()
        try:
            for fn in self:
                results.append(await fn(payload))
        except Break as broken:
            results.broken = broken
        except RecursionError as exc:
            raise endless(exc, event)  # noqa: B904  (chained inside)
        except Exception as exc:
            note(exc, fn, event)
            raise
        return results


@final
class _Awaited(_AwaitedAny):
    """Coroutine functions, no dynamic check, on a payload that names its event."""

    __slots__ = ()

    async def emit(self, event: str, payload: Any) -> Break | None:
        # Bus.emit runs this inline (the check, then _AwaitedAny's loop): keep the two alike.
        if payload.event is not event:
            contradiction(event, payload)
        return await _AwaitedAny.emit(self, event, payload)

    async def collect(self, event: str, payload: Any) -> Results:
        if payload.event is not event:
            contradiction(event, payload)
        return await _AwaitedAny.collect(self, event, payload)


class _Plain(Entry):
    """Plain functions, no dynamic check, on a payload that names its event."""

    __slots__ = ()

    async def collect(self, event: str, payload: Any) -> Results:
        if payload.event is not event:
            contradiction(event, payload)
        results = Results()
        try:
            for fn in self:
                results.append(result := fn(payload))
                if result is not None:
                    returned(fn, event, result)
        except Break as broken:
            results.broken = broken
        except RecursionError as exc:
            raise endless(exc, event)  # noqa: B904  (chained inside)
        except Exception as exc:
            note(exc, fn, event)
            raise
        return results


@final
class _Called(_Plain):
    """Plain functions that return nothing (by their code), no dynamic check, on a payload
    that names its event."""

    __slots__ = ()

    async def emit(self, event: str, payload: Any) -> Break | None:
        # Bus.emit runs a copy of this loop inline: keep the two alike.
        if payload.event is not event:
            contradiction(event, payload)
        try:
            for fn in self:
                fn(payload)
        except Break as broken:
            return broken
        except RecursionError as exc:
            raise endless(exc, event)  # noqa: B904  (chained inside)
        except Exception as exc:
            note(exc, fn, event)
            raise
        return None


@final
class _CalledChecked(_Plain):
    """Plain functions, no dynamic check, on a payload that names its event; what each
    returns is checked."""

    __slots__ = ()

    async def emit(self, event: str, payload: Any) -> Break | None:
        if payload.event is not event:
            contradiction(event, payload)
        try:
            for fn in self:
                if (result := fn(payload)) is not None:
                    returned(fn, event, result)
        except Break as broken:
            return broken
        except RecursionError as exc:
            raise endless(exc, event)  # noqa: B904  (chained inside)
        except Exception as exc:
            note(exc, fn, event)
            raise
        return None


class _Checked(Entry):
    """``(fn, check, is_async)`` triples, on a payload that does not name its event."""

    __slots__ = ()
    names_event: ClassVar[bool] = False

    async def emit(self, event: str, payload: Any) -> Break | None:
        if self.names_event and payload.event != event:
            contradiction(event, payload)
        fn = check = None
        try:
            for fn, check, is_async in self:
                if check is not None:
                    if not check(payload):
                        continue
                    check = None
                if is_async:
                    await fn(payload)
                elif (result := fn(payload)) is not None:
                    returned(fn, event, result)
        except Break as broken:
            return broken
        except RecursionError as exc:
            raise endless(exc, event)  # noqa: B904  (chained inside)
        except Exception as exc:
            note(exc, fn, event, selector=check is not None)
            raise
        return None

    async def collect(self, event: str, payload: Any) -> Results:
        if self.names_event and payload.event != event:
            contradiction(event, payload)
        results = Results()
        fn = check = None
        try:
            for fn, check, is_async in self:
                if check is not None:
                    if not check(payload):
                        continue
                    check = None
                result = fn(payload)
                if is_async:
                    result = await result
                elif result is not None:
                    returned(fn, event, result)
                results.append(result)
        except Break as broken:
            results.broken = broken
        except RecursionError as exc:
            raise endless(exc, event)  # noqa: B904  (chained inside)
        except Exception as exc:
            note(exc, fn, event, selector=check is not None)
            raise
        return results


@final
class _NamedChecked(_Checked):
    """``(fn, check, is_async)`` triples, on a payload that names its event."""

    __slots__ = ()
    names_event: ClassVar[bool] = True


#: The entry of nothing: what a miss finds (falsy, so ``Bus.emit`` returns at once).
EMPTY: Final = _AwaitedAny()


def make_entry(event: str, hooks: tuple[Chosen, ...], names_event: bool) -> Entry:
    """The default factory: the barest shape that runs ``hooks`` correctly."""
    if not hooks:
        return EMPTY
    if all(c.check is None for c in hooks):
        if all(c.info.is_async for c in hooks):
            return (_Awaited if names_event else _AwaitedAny)(c.info.fn for c in hooks)
        if names_event and not any(c.info.is_async for c in hooks):
            plain = _Called if all(c.info.returns_none for c in hooks) else _CalledChecked
            return plain(c.info.fn for c in hooks)
    triples = ((c.info.fn, c.check, c.info.is_async) for c in hooks)
    return _NamedChecked(triples) if names_event else _Checked(triples)


# -- the errors of a dispatch, shared by every entry and by Bus.emit ---------------------


def endless(exc: RecursionError, event: str) -> HookRecursionError:
    """Turn the interpreter's recursion limit, caught as it unwinds, into the hooks' story.

    The innermost dispatch makes the ``HookRecursionError``; each enclosing one prepends its
    event to the chain. Nothing is counted on the way in, so the hot path pays nothing.
    """
    if isinstance(exc, HookRecursionError):
        return exc.extend(event)
    error = HookRecursionError((event,))
    error.__cause__ = exc
    return error


def note(exc: Exception, fn: object, event: str, *, selector: bool = False) -> None:
    """Add the note naming the hook (or its selector) and the event that ``exc`` came from."""
    what = "the selector of hook" if selector else "hook"
    exc.add_note(f"raised by {what} {hook_name(fn)} on event {event!r}")


def contradiction(event: str, payload: Any) -> None:
    """Refuse a payload whose ``.event`` is not the event dispatched (equal strings pass)."""
    if payload.event == event:
        return
    raise ValueError(
        f"emit({event!r}, ...) was given a {type(payload).__qualname__} whose event is "
        f"{payload.event!r}: a hook never sees a payload that contradicts its dispatch "
        f"(build the payload with {event!r}, or emit {payload.event!r})"
    )


def returned(fn: object, event: str, result: object) -> None:
    """Refuse a plain hook that returned a coroutine: that coroutine would never run."""
    if type(result) is types.CoroutineType:
        result.close()  # it never ran: no "never awaited" warning on top of this error
        raise TypeError(
            f"hook {hook_name(fn)} is a plain function that returned a coroutine on event "
            f"{event!r}, so its work never ran: make it a coroutine function (async def), "
            f"or await the coroutine inside it"
        )
