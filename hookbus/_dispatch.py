"""Index entries: what one dispatch of an ``(event, key)`` runs, built once per entry.

An entry is the coroutine function that runs the ordered hooks of an ``(event, key)`` under
one ``hooks_control`` state: ``entry(payload)`` returns the coroutine ``Bus.emit`` returns,
and ``entry.collect(payload)`` the one ``Bus.collect`` awaits. The default factory,
:func:`make_entry`, generates both for the entry's hooks (``_generate.py``): the awaits
unrolled, plain hooks called without ``await``, dynamic checks in place, the payload's event
name checked first when it carries one. :data:`NOTHING` is the entry of no hook, shared by
every miss.

**Entry factories.** A bus builds its entries with ``factory(event, hooks, names_event)``;
``hooks`` is a tuple of :class:`Chosen` in call order, ``names_event`` says whether the
payload carries its event name in ``payload.event``. A factory returns an :func:`entry`
(:data:`NOTHING` when nothing runs). Instrumentation plugs in there, through the public
``hookbus.instrumentation``: its factory builds instrumented entries, and with the default
factory nothing on the hot path tests whether instrumentation is on.

Rules every entry keeps: a ``Break`` stops the remaining hooks and is returned (``emit``)
or put on ``results.broken`` (``collect``); any other exception propagates with a note
naming the hook (or its selector) and the event; the interpreter's recursion limit, caught
as it unwinds, becomes a ``HookRecursionError`` naming the chain of events (nothing is
counted on the way in); a plain hook that returns a coroutine is refused (it would never
run), unless its code returns nothing (``HookInfo.returns_none``); a payload whose
``.event`` contradicts the dispatch never reaches a hook.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Final, NamedTuple, Protocol, cast, final

from ._exceptions import Break, HookRecursionError
from ._generate import Kind, Shape, Step, dispatchers
from ._hooks import HookInfo, hook_name
from ._selectors import Predicate

__all__ = [
    "NOTHING", "Chosen", "Entry", "EntryFactory", "Results", "entry", "make_entry", "nothing",
]  # fmt: skip


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


class Entry(Protocol):
    """What a dispatch runs: called with the payload, it returns the dispatch's coroutine;
    ``collect`` likewise returns the coroutine that collects the hooks' results."""

    def __call__(self, payload: Any, /) -> Coroutine[Any, Any, Break | None]: ...

    @property
    def collect(self) -> Callable[[Any], Coroutine[Any, Any, Results]]: ...


EntryFactory = Callable[[str, tuple[Chosen, ...], bool], Entry]


def entry(
    emit: Callable[[Any], Coroutine[Any, Any, Break | None]],
    collect: Callable[[Any], Coroutine[Any, Any, Results]],
) -> Entry:
    """Make an entry of two coroutine functions of the payload: ``emit`` (returns ``None``
    or the ``Break``) and ``collect`` (returns :class:`Results`). ``emit`` becomes the entry
    (called at each dispatch, with no wrapper in between) and carries ``collect``."""
    if not isinstance(emit, types.FunctionType):
        raise TypeError(f"an entry's emit is a coroutine function, not {emit!r}")
    if getattr(emit, "collect", collect) is not collect:
        raise TypeError(
            f"{emit.__qualname__} is already the emit of another entry: make a new function "
            "per entry (a closure), since the entry is its emit"
        )
    emit.collect = collect  # type: ignore[attr-defined]
    return cast(Entry, emit)


async def _nothing(payload: Any) -> None:
    return None


async def nothing() -> None:
    """What ``Bus.emit`` returns the coroutine of when no hook runs: ``NOTHING``'s emit
    without its argument, one less to pass on the path of a miss."""
    return None


async def _nothing_collected(payload: Any) -> Results:
    return Results()


#: The entry of nothing: what a miss finds.
NOTHING: Final = entry(_nothing, _nothing_collected)


def make_entry(event: str, hooks: tuple[Chosen, ...], names_event: bool) -> Entry:
    """The default factory: dispatchers generated for ``hooks`` (see ``_generate.py``)."""
    if not hooks:
        return NOTHING
    steps = tuple(Step(_kind(c.info), c.check is not None) for c in hooks)
    emit, collect = dispatchers(
        Shape(steps, names_event),
        event,
        [c.info.fn for c in hooks],
        [c.check for c in hooks],
        _HELPERS,
    )
    return entry(emit, collect)


def _kind(info: HookInfo) -> Kind:
    if info.is_async:
        return Kind.AWAITED
    return Kind.CALLED if info.returns_none else Kind.CHECKED


# -- the errors of a dispatch, shared by every entry (and, public, by hookbus.instrumentation)


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


def blame(
    exc: Exception, event: str, hooks: Sequence[object], lines: Mapping[int, tuple[int, bool]]
) -> None:
    """Add the note naming the hook that raised ``exc``, found from the line of the
    generated dispatcher that raised it (the first entry of its traceback)."""
    tb = exc.__traceback__
    where = None if tb is None else lines.get(tb.tb_lineno)
    if where is None:  # not raised by a hook's line: say where, not whom
        exc.add_note(f"raised in a dispatch of event {event!r}")
        return
    position, selector = where
    note(exc, hooks[position], event, selector=selector)


def note(exc: BaseException, fn: object, event: str, *, selector: bool = False) -> None:
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


_HELPERS: Final[dict[str, Any]] = {
    "Break": Break,
    "Results": Results,
    "blame": blame,
    "contradiction": contradiction,
    "endless": endless,
    "returned": returned,
}
