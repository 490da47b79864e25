"""``bus.explain(event, key)``: which hooks a dispatch would run, and why the others would not.

Read from the registrations, not from the index: explaining builds no entry and changes
nothing. The answer is made under the ``hooks_control`` state in force where it is asked,
like a dispatch there would be.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Sequence
from typing import Any, final

import msgspec

from ._control import current_control
from ._events import EventSpec
from ._hooks import HookInfo
from ._table import render_table

__all__ = ["Explanation", "ExplainedHook", "Verdict", "explain"]


@final
class Verdict(enum.Enum):
    """What a dispatch would do with one hook."""

    RUNS = "runs"
    AT_DISPATCH = "decided at dispatch"
    SKIPPED = "skipped"


@final
class ExplainedHook(msgspec.Struct, frozen=True):
    """One hook of the event, in call order: its verdict and why."""

    hook: HookInfo
    verdict: Verdict
    reason: str

    @property
    def runs(self) -> bool | None:
        """``True``: it runs; ``False``: it does not; ``None``: decided at dispatch."""
        return None if self.verdict is Verdict.AT_DISPATCH else self.verdict is Verdict.RUNS


@final
class Explanation(msgspec.Struct, frozen=True):
    """What a dispatch of ``event`` for ``key`` would do with each hook of the event.

    ``hooks`` lists every hook registered on the event, in call order. ``str()`` is a table.
    """

    event: str
    key: Any
    control: str | None
    payload_given: bool
    hooks: tuple[ExplainedHook, ...]

    @property
    def running(self) -> tuple[HookInfo, ...]:
        """The hooks that would run, in order (those decided at dispatch left out)."""
        return tuple(h.hook for h in self.hooks if h.verdict is Verdict.RUNS)

    @property
    def undecided(self) -> tuple[HookInfo, ...]:
        """The hooks whose dynamic check decides at dispatch (no payload was given)."""
        return tuple(h.hook for h in self.hooks if h.verdict is Verdict.AT_DISPATCH)

    @property
    def skipped(self) -> tuple[ExplainedHook, ...]:
        """The hooks that would not run, each with its reason."""
        return tuple(h for h in self.hooks if h.verdict is Verdict.SKIPPED)

    def __str__(self) -> str:
        head = f"event {self.event!r}, key {self.key!r}"
        if self.control is not None:
            head += f", under {self.control}"
        if not self.hooks:
            return f"{head}: no hook is registered on this event"
        rows = [("#", "VERDICT", "HOOK", "CATEGORY", "PRIORITY", "WHY")]
        order = 0
        for h in self.hooks:
            position = ""
            if h.verdict is not Verdict.SKIPPED:
                order += 1
                position = str(order)
            rows.append(
                (position, h.verdict.value, h.hook.name, h.hook.category, str(h.hook.priority),
                 h.reason)
            )  # fmt: skip
        return f"{head}\n{render_table(rows)}"


def explain(
    spec: EventSpec,
    hooks: Sequence[HookInfo],
    protected: frozenset[str],
    key: Hashable,
    payload: Any,
) -> Explanation:
    """Explain a dispatch of ``spec`` for ``key`` (or ``payload``'s key) over ``hooks``.

    ``hooks`` are the event's hooks in call order. A ``payload`` decides the dynamic checks;
    its key is used when ``key`` is not given, and must agree with it when it is.
    """
    given = payload is not None
    if given:
        if not isinstance(payload, spec.payload):
            raise TypeError(
                f"event {spec.name!r} carries {spec.payload.__qualname__} payloads, "
                f"not {type(payload).__qualname__}"
            )
        own = None if spec.key is None else getattr(payload, spec.key)
        if key is None:
            key = own
        elif key != own:
            raise ValueError(
                f"explain({spec.name!r}, {key!r}, payload): the payload's key is {own!r}"
            )
    try:
        hash(key)
    except TypeError:
        raise TypeError(f"event {spec.name!r}: a key is hashable, not {key!r}") from None
    control = current_control()
    explained = []
    for info in hooks:
        if control is not None and not control.enabled(info.category, protected):
            verdict, reason = Verdict.SKIPPED, f"category {info.category!r} disabled"
        else:
            verdict, reason = _select(info, spec, key, payload, given)
        explained.append(ExplainedHook(info, verdict, reason))
    return Explanation(
        spec.name, key, None if control is None else repr(control), given, tuple(explained)
    )


def _select(
    info: HookInfo, spec: EventSpec, key: Hashable, payload: Any, given: bool
) -> tuple[Verdict, str]:
    select = info.select
    if select is None:
        return Verdict.RUNS, "no selector"
    decided = select.specialize(spec, key)
    if decided is True:
        return Verdict.RUNS, f"{select!r} names this key"
    if decided is False:
        keys = select.keys(spec)
        named = "" if keys is None else f" (it names {', '.join(sorted(map(repr, keys)))})"
        return Verdict.SKIPPED, f"{select!r} does not match key {key!r}{named}"
    if not callable(decided):
        raise TypeError(
            f"selector {select!r} of hook {info.name} returned {decided!r} for {key!r} on "
            f"{spec.name!r}: specialize() must return True, False or a predicate"
        )
    if not given:
        return Verdict.AT_DISPATCH, f"{select!r}: its dynamic check decides per payload"
    try:
        passed = bool(decided(payload))
    except Exception as exc:
        return Verdict.SKIPPED, f"{select!r}: its check raised {exc!r} (the dispatch would too)"
    if passed:
        return Verdict.RUNS, f"{select!r}: its check passes for this payload"
    return Verdict.SKIPPED, f"{select!r}: its check rejects this payload"
