"""The dispatchers of index entries, generated for their hooks: the loop written once.

An entry runs a fixed tuple of hooks; what varies between entries is their number, whether
each is awaited, called, or called with its result checked, which have a dynamic check, and
whether the payload names its event. That is the entry's *shape*. For each shape this module
writes, once, the source of a factory whose two coroutine functions run such hooks with
every await unrolled (``await h0(payload)``, ``await h1(payload)``, ...): no loop, no tuple
to iterate, no test of a hook's kind at dispatch. The factory is then called with each
entry's own hooks, checks and event name, which its functions hold as closure cells.

**Safety.** The source is assembled only from the fixed lines below and from positions
(``h0``, ``c0``, ...): no name, string or value that reaches the bus from outside (a hook's
name, an event name, a key, a field) is ever formatted into it. Those go in as objects, as
the factory's arguments. Compiled code is cached per shape (bounded), never per entry.

**Naming the failing hook.** Each hook's call is on a line of its own. An exception caught
in the dispatcher carries a traceback whose first entry is the dispatcher's own frame, at
the line that raised: that line, looked up in the shape's map of lines to positions (a
global of the shape's code), names the hook (or its selector) in the note, at no cost until
something fails: the tuple of the entry's hooks is built only then, so that a dispatch
copies no more closure cells than it runs hooks (and its event name).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, NamedTuple

__all__ = ["Kind", "Shape", "Step", "dispatchers"]


class Kind(enum.Enum):
    """How one hook of an entry is run."""

    AWAITED = "await"  # a coroutine function: awaited
    CALLED = "call"  # a plain function that returns nothing by its code: called
    CHECKED = "check"  # a plain function that may return something: its result is checked


class Step(NamedTuple):
    """One hook of a shape: how it runs, and whether a dynamic check decides first."""

    kind: Kind
    checked: bool


class Shape(NamedTuple):
    """What the generated source depends on: the steps in call order, and whether the
    payload names its event (then checked against the dispatch first)."""

    steps: tuple[Step, ...]
    names_event: bool


#: Where each line of a shape's source stands: line -> (position of the hook, whether the
#: line is the hook's dynamic check).
Lines = dict[int, tuple[int, bool]]
Emit = Callable[[Any], Coroutine[Any, Any, Any]]
Factory = Callable[..., tuple[Emit, Emit]]

#: Compiled shapes kept (the oldest forgotten first); applications have a few dozen.
MAX_SHAPES: Final = 512
_compiled: dict[Shape, Factory] = {}


def dispatchers(
    shape: Shape,
    event: str,
    hooks: Sequence[Callable[[Any], Any]],
    checks: Sequence[Callable[[Any], Any] | None],
    helpers: dict[str, Any],
) -> tuple[Emit, Emit]:
    """The ``emit`` and ``collect`` coroutine functions of one entry of ``shape``.

    ``hooks`` and ``checks`` are in call order (a check is ``None`` where the step has
    none). ``helpers`` are the module-level names the source uses (``Break``, ``Results``,
    ``blame``, ``contradiction``, ``endless``, ``returned``), given by the caller so that
    this module depends on nothing of the bus.
    """
    found = _compiled.get(shape)
    if found is None:
        if len(_compiled) >= MAX_SHAPES:
            del _compiled[next(iter(_compiled))]
        found = _compiled[shape] = _compile(shape, helpers)
    arguments: list[Any] = [event]
    for step, hook, check in zip(shape.steps, hooks, checks, strict=True):
        arguments.append(hook)
        if step.checked:
            arguments.append(check)
    return found(*arguments)


def _compile(shape: Shape, helpers: dict[str, Any]) -> Factory:
    source, lines = _source(shape)
    namespace = {**helpers, "LINES": lines}  # the shape's map of lines, a global of its code
    code = compile(source, "<hookbus dispatcher>", "exec")
    exec(code, namespace)  # the bus's own template: see the module docstring
    factory: Factory = namespace["factory"]
    return factory


def _source(shape: Shape) -> tuple[str, Lines]:
    """The factory's source for ``shape``, and the map of its lines to hook positions."""
    parameters = ["EVENT"]
    for i, step in enumerate(shape.steps):
        parameters.append(f"h{i}")
        if step.checked:
            parameters.append(f"c{i}")
    out: list[str] = [f"def factory({', '.join(parameters)}):"]
    lines: Lines = {}
    hooks = ", ".join(f"h{i}" for i in range(len(shape.steps)))  # only where a hook failed

    def line(text: str, position: int | None = None, check: bool = False) -> None:
        out.append(text)
        if position is not None:
            lines[len(out)] = (position, check)

    for collect in (False, True):
        line(f"    async def {'collect' if collect else 'emit'}(payload):")
        if shape.names_event:
            line("        if payload.event is not EVENT:")
            line("            contradiction(EVENT, payload)")
        if collect:
            line("        results = Results()")
        line("        try:")
        for i, step in enumerate(shape.steps):
            pad = "            "
            if step.checked:
                line(f"{pad}if c{i}(payload):", i, check=True)
                pad += "    "
            _step(line, pad, i, step.kind, collect)
        line("        except Break as broken:")
        line("            results.broken = broken" if collect else "            return broken")
        line("        except RecursionError as exc:")
        line("            raise endless(exc, EVENT)")
        line("        except Exception as exc:")
        line(f"            blame(exc, EVENT, ({hooks},), LINES)")
        line("            raise")
        line("        return results" if collect else "        return None")
    line("    return emit, collect")
    return "\n".join(out) + "\n", lines


def _step(line: Callable[..., None], pad: str, i: int, kind: Kind, collect: bool) -> None:
    """The lines that run hook ``i``; each line that can raise for it is mapped to it."""
    call = f"await h{i}(payload)" if kind is Kind.AWAITED else f"h{i}(payload)"
    if kind is not Kind.CHECKED:
        line(f"{pad}results.append({call})" if collect else f"{pad}{call}", i)
    else:
        line(f"{pad}result = h{i}(payload)", i)
        line(f"{pad}if result is not None:")
        line(f"{pad}    returned(h{i}, EVENT, result)", i)
        if collect:
            line(f"{pad}results.append(result)")
