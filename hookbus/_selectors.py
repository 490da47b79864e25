"""Selectors: which dispatches a hook takes part in.

A selector has a static part, settled when the index is built for an ``(event, key)``, and
an optional dynamic part evaluated per dispatch. ``specialize(spec, key)`` returns ``True``
(always matches that key), ``False`` (never does) or a predicate over the payload (the only
work left for dispatch time). ``is_instance``, ``match_rtype``, ``match_rtype_sets`` and
``match_key`` are wholly static; ``where`` is wholly dynamic. ``&``, ``|`` and ``~`` combine
them, and the static results fold away: ``is_instance("Person") & where(p)`` costs nothing
for a ``Company`` and one call of ``p`` for a ``Person``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any, TypeAlias, final

from ._events import EventSpec

__all__ = [
    "Predicate",
    "Selector",
    "Specialized",
    "is_instance",
    "match_key",
    "match_rtype",
    "match_rtype_sets",
    "where",
]

Predicate: TypeAlias = Callable[[Any], bool]
#: What a selector leaves for an ``(event, key)``: always, never, or a per-payload check.
Specialized: TypeAlias = "bool | Predicate"


class Selector:
    """Base class of selectors; subclass it and implement :meth:`specialize`.

    :meth:`keys` tells which keys the selector can match for an event (``None``: any key);
    it lets registration refuse a selector that can never match, and feeds the listing.
    :meth:`mentions` tells which keys it singles out, so that the index resolves every
    other key through one shared entry.
    """

    __slots__ = ()

    def specialize(self, spec: EventSpec, key: Hashable) -> Specialized:
        """Return ``True``, ``False`` or a predicate over the payload, for this event and key."""
        raise NotImplementedError

    def keys(self, spec: EventSpec) -> frozenset[Hashable] | None:
        """The keys this selector can match on ``spec``; ``None`` means any key."""
        return None

    def mentions(self, spec: EventSpec) -> frozenset[Hashable] | None:
        """The keys this selector singles out on ``spec``.

        For every key outside them, :meth:`specialize` gives one same answer, so the index
        shares one entry among all such keys. ``None``: the answer may change with any key;
        the selector is then asked per dispatch for keys no other selector names. The
        default is :meth:`keys` (a selector matches no key outside those).
        """
        return self.keys(spec)

    def __and__(self, other: Selector) -> Selector:
        return _And(self, _check(other))

    def __or__(self, other: Selector) -> Selector:
        return _Or(self, _check(other))

    def __invert__(self) -> Selector:
        return _Not(self)


def _check(other: object) -> Selector:
    if not isinstance(other, Selector):
        raise TypeError(f"cannot combine a selector with {other!r}")
    return other


@final
class _KeyIn(Selector):
    """Matches when the event is keyed by ``field`` and its key is one of ``values``."""

    __slots__ = ("field", "label", "values")

    def __init__(self, label: str, field: str | None, values: Iterable[Hashable]) -> None:
        self.label = label
        self.field = field
        self.values = frozenset(values)
        if not self.values:
            raise ValueError(f"{label}() needs at least one name")
        for value in self.values:
            if field is not None and not (isinstance(value, str) and value):
                raise TypeError(f"{label}() takes type names (non-empty strings), not {value!r}")

    def _applies(self, spec: EventSpec) -> bool:
        return spec.key is not None and (self.field is None or spec.key == self.field)

    def specialize(self, spec: EventSpec, key: Hashable) -> Specialized:
        return self._applies(spec) and key in self.values

    def keys(self, spec: EventSpec) -> frozenset[Hashable] | None:
        return self.values if self._applies(spec) else frozenset()

    def __repr__(self) -> str:
        return f"{self.label}({', '.join(map(repr, sorted(self.values, key=str)))})"


def is_instance(*etypes: str) -> Selector:
    """Match entity and load events whose entity type is one of ``etypes``."""
    return _KeyIn("is_instance", "etype", etypes)


def match_rtype(*rtypes: str) -> Selector:
    """Match relation events whose relation type is one of ``rtypes``."""
    return _KeyIn("match_rtype", "rtype", rtypes)


def match_rtype_sets(*rtypesets: Iterable[str]) -> Selector:
    """Match relation events whose relation type is in any of the given sets (CubicWeb)."""
    for rset in rtypesets:
        if isinstance(rset, str):
            raise TypeError(
                f"match_rtype_sets() takes sets of relation types, not the string {rset!r}; "
                "use match_rtype() for names"
            )
    return _KeyIn("match_rtype_sets", "rtype", (r for rset in rtypesets for r in rset))


def match_key(*keys: Hashable) -> Selector:
    """Match any keyed event (entity, relation, load, keyed application event) by its key."""
    return _KeyIn("match_key", None, keys)


@final
class _Where(Selector):
    __slots__ = ("predicate",)

    def __init__(self, predicate: Predicate) -> None:
        if not callable(predicate):
            raise TypeError(f"where() takes a callable, not {predicate!r}")
        self.predicate = predicate

    def specialize(self, spec: EventSpec, key: Hashable) -> Specialized:
        return self.predicate

    def mentions(self, spec: EventSpec) -> frozenset[Hashable] | None:
        return frozenset()

    def __repr__(self) -> str:
        return f"where({getattr(self.predicate, '__qualname__', self.predicate)!r})"


def where(predicate: Predicate) -> Selector:
    """Match when ``predicate(payload)`` is true: the only part evaluated per dispatch."""
    return _Where(predicate)


@final
class _And(Selector):
    __slots__ = ("left", "right")

    def __init__(self, left: Selector, right: Selector) -> None:
        self.left, self.right = left, right

    def specialize(self, spec: EventSpec, key: Hashable) -> Specialized:
        left = self.left.specialize(spec, key)
        if left is False:
            return False
        right = self.right.specialize(spec, key)
        if right is False:
            return False
        if left is True:
            return right
        if right is True:
            return left
        return lambda payload: left(payload) and right(payload)

    def keys(self, spec: EventSpec) -> frozenset[Hashable] | None:
        left, right = self.left.keys(spec), self.right.keys(spec)
        if left is None:
            return right
        return left if right is None else left & right

    def mentions(self, spec: EventSpec) -> frozenset[Hashable] | None:
        both = _both(self.left.mentions(spec), self.right.mentions(spec))
        return self.keys(spec) if both is None else both

    def __repr__(self) -> str:
        return f"({self.left!r} & {self.right!r})"


@final
class _Or(Selector):
    __slots__ = ("left", "right")

    def __init__(self, left: Selector, right: Selector) -> None:
        self.left, self.right = left, right

    def specialize(self, spec: EventSpec, key: Hashable) -> Specialized:
        left = self.left.specialize(spec, key)
        if left is True:
            return True
        right = self.right.specialize(spec, key)
        if right is True:
            return True
        if left is False:
            return right
        if right is False:
            return left
        return lambda payload: left(payload) or right(payload)

    def keys(self, spec: EventSpec) -> frozenset[Hashable] | None:
        left, right = self.left.keys(spec), self.right.keys(spec)
        return None if left is None or right is None else left | right

    def mentions(self, spec: EventSpec) -> frozenset[Hashable] | None:
        return _both(self.left.mentions(spec), self.right.mentions(spec))

    def __repr__(self) -> str:
        return f"({self.left!r} | {self.right!r})"


@final
class _Not(Selector):
    __slots__ = ("inner",)

    def __init__(self, inner: Selector) -> None:
        self.inner = inner

    def specialize(self, spec: EventSpec, key: Hashable) -> Specialized:
        inner = self.inner.specialize(spec, key)
        if isinstance(inner, bool):
            return not inner
        return lambda payload: not inner(payload)

    def mentions(self, spec: EventSpec) -> frozenset[Hashable] | None:
        return self.inner.mentions(spec)

    def __repr__(self) -> str:
        return f"~{self.inner!r}"


def _both(
    left: frozenset[Hashable] | None, right: frozenset[Hashable] | None
) -> frozenset[Hashable] | None:
    return None if left is None or right is None else left | right
