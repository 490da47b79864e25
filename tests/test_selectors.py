"""Selectors: the static part settled per key, the dynamic part per dispatch."""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import Any

import msgspec
import pytest

from hookbus import (
    Bus,
    EntityEvent,
    EventSpec,
    RegistrationError,
    RelationEvent,
    Selector,
    is_instance,
    match_key,
    match_rtype,
    match_rtype_sets,
    where,
)
from hookbus._events import BUILTIN_EVENTS

ADD = BUILTIN_EVENTS["after_add_entity"]
REL = BUILTIN_EVENTS["after_add_relation"]


def test_static_selectors_fold_to_booleans_per_key() -> None:
    person = is_instance("Person")
    assert person.specialize(ADD, "Person") is True
    assert person.specialize(ADD, "Company") is False
    assert person.specialize(REL, "Person") is False  # not an entity event
    assert (person | is_instance("Company")).specialize(ADD, "Company") is True
    assert (person & is_instance("Company")).specialize(ADD, "Person") is False
    assert (~person).specialize(ADD, "Company") is True
    assert match_rtype_sets({"boss", "employs"}, {"subsidiary_of"}).specialize(REL, "subsidiary_of")


def test_only_the_dynamic_part_is_left_for_dispatch() -> None:
    def rich(event: object) -> bool:
        return True

    person_and_rich = is_instance("Person") & where(rich)
    assert person_and_rich.specialize(ADD, "Company") is False
    assert person_and_rich.specialize(ADD, "Person") is rich
    assert (is_instance("Person") | where(rich)).specialize(ADD, "Person") is True
    assert (is_instance("Person") | where(rich)).specialize(ADD, "Company") is rich


def test_static_keys_for_the_listing() -> None:
    assert (is_instance("A") | is_instance("B")).keys(ADD) == {"A", "B"}
    assert (is_instance("A", "B") & is_instance("B", "C")).keys(ADD) == {"B"}
    assert (is_instance("A") & where(bool)).keys(ADD) == {"A"}
    assert (~is_instance("A")).keys(ADD) is None
    assert is_instance("A").keys(REL) == frozenset()


def test_selector_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="at least one"):
        is_instance()
    with pytest.raises(TypeError, match="type names"):
        is_instance(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot combine"):
        is_instance("A") & "B"  # type: ignore[operator]
    with pytest.raises(TypeError, match="callable"):
        where(3)  # type: ignore[arg-type]


async def test_negated_and_combined_selectors_dispatch() -> None:
    bus = Bus()
    seen: list[str] = []
    bus.hook("after_add_entity", select=~is_instance("Secret"))(lambda e: seen.append(e.etype))
    bus.hook(
        "after_add_relation",
        select=match_rtype("boss") & where(lambda e: e.eidfrom != e.eidto),
    )(lambda e: seen.append(f"{e.rtype}:{e.eidfrom}>{e.eidto}"))
    for etype in ("Person", "Secret"):
        await bus.emit("after_add_entity", EntityEvent("after_add_entity", etype, 1))
    for a, b in ((1, 2), (3, 3)):
        await bus.emit("after_add_relation", RelationEvent("after_add_relation", "boss", a, b))
    assert seen == ["Person", "boss:1>2"]


def test_match_rtype_sets_refuses_bare_names() -> None:
    with pytest.raises(TypeError, match="use match_rtype"):
        match_rtype_sets("boss", "knows")


def big(event: EntityEvent) -> bool:
    return bool(event.eid >= 10)


def even(event: EntityEvent) -> bool:
    return bool(event.eid % 2 == 0)


async def dispatched(select: Selector, *payloads: tuple[str, int]) -> list[str]:
    """The ``etype:eid`` of the payloads a hook selected by ``select`` ran for."""
    bus = Bus()
    seen: list[str] = []
    bus.hook("after_add_entity", select=select)(lambda e: seen.append(f"{e.etype}:{e.eid}"))
    for etype, eid in payloads:
        await bus.emit("after_add_entity", EntityEvent("after_add_entity", etype, eid))
        await bus.collect("after_add_entity", EntityEvent("after_add_entity", etype, eid))
    return seen[::2]  # emit and collect ran the same hooks: one of each


PAYLOADS = (("A", 1), ("A", 10), ("A", 12), ("B", 3), ("B", 12))


@pytest.mark.parametrize(
    ("select", "expected"),
    [
        (where(big) & where(even), ["A:10", "A:12", "B:12"]),
        (where(big) | where(even), ["A:10", "A:12", "B:12"]),
        (where(big) & ~where(even), []),
        (where(even) | ~where(big), ["A:1", "A:10", "A:12", "B:3", "B:12"]),
        (~where(big), ["A:1", "B:3"]),
        (~(where(big) & where(even)), ["A:1", "B:3"]),
        (where(big) & is_instance("A"), ["A:10", "A:12"]),
        (is_instance("A") & where(big), ["A:10", "A:12"]),
        (where(big) | is_instance("A"), ["A:1", "A:10", "A:12", "B:12"]),
        (is_instance("A") | where(big), ["A:1", "A:10", "A:12", "B:12"]),
        (~is_instance("A") & where(even), ["B:12"]),
        (~(is_instance("A") | where(big)), ["B:3"]),
    ],
    ids=repr,
)
async def test_payload_predicates_combine_like_booleans(
    select: Selector, expected: list[str]
) -> None:
    assert await dispatched(select, *PAYLOADS) == expected


class Odd(Selector):
    """A user's selector: only ``specialize``, nothing said about its keys."""

    def specialize(self, spec: EventSpec, key: Hashable) -> bool | Callable[[Any], bool]:
        return lambda event: bool(event.eid % 2)


class Named(Selector):
    """A user's selector that names its keys and decides them statically."""

    def specialize(self, spec: EventSpec, key: Hashable) -> bool | Callable[[Any], bool]:
        return key == "B"

    def keys(self, spec: EventSpec) -> frozenset[Hashable] | None:
        return frozenset({"B"})


@pytest.mark.parametrize(
    ("select", "expected"),
    [
        (Odd(), ["A:1", "B:3"]),
        (Odd() & is_instance("A"), ["A:1"]),
        (Odd() | is_instance("A"), ["A:1", "A:10", "A:12", "B:3"]),
        (is_instance("B") & Odd(), ["B:3"]),
        (Odd() & where(big), []),
        (Odd() | where(even), ["A:1", "A:10", "A:12", "B:3", "B:12"]),
        (~Odd(), ["A:10", "A:12", "B:12"]),
        (Named(), ["B:3", "B:12"]),
        (Named() | is_instance("A"), ["A:1", "A:10", "A:12", "B:3", "B:12"]),
        (Named() & where(big), ["B:12"]),
        (Named() & Odd(), ["B:3"]),
        (~Named() | where(even), ["A:1", "A:10", "A:12", "B:12"]),
    ],
    ids=repr,
)
async def test_a_users_selector_combines_with_the_built_in_ones(
    select: Selector, expected: list[str]
) -> None:
    assert await dispatched(select, *PAYLOADS) == expected


def test_combinations_with_where_register_on_any_keyed_or_unkeyed_event() -> None:
    bus = Bus()
    for select in (
        is_instance("A") | where(big),
        where(big) | is_instance("A"),
        where(big) & where(even),
        ~where(big),
        Odd() | where(big),
        Named() & Odd(),
    ):
        bus.hook("after_add_entity", select=select)(lambda e: None)
    bus.hook("server_startup", select=where(bool) | ~where(bool))(lambda e: None)
    assert len(bus.registered()) == 7


async def test_a_users_selector_under_and_is_settled_once_per_key_named_beside_it() -> None:
    asked: list[Hashable] = []

    class Counting(Selector):
        def specialize(self, spec: EventSpec, key: Hashable) -> bool | Callable[[Any], bool]:
            asked.append(key)
            return True

    bus = Bus()
    seen: list[str] = []
    bus.hook("after_add_entity", select=Counting() & is_instance("A"))(
        lambda e: seen.append(e.etype)
    )
    asked.clear()
    for _ in range(100):
        for etype in ("A", "B", "C"):
            await bus.emit("after_add_entity", EntityEvent("after_add_entity", etype, 1))
    assert seen == ["A"] * 100
    assert len(asked) <= 3  # settled when the entries are built, not asked per dispatch


def test_selectors_read_as_written() -> None:
    assert repr(is_instance("Person", "Company")) == "is_instance('Company', 'Person')"
    assert repr(match_rtype("boss")) == "match_rtype('boss')"
    assert repr(match_rtype_sets({"boss"}, ["knows"])) == "match_rtype_sets('boss', 'knows')"
    assert repr(match_key(2, "a", 10)) == "match_key(10, 2, 'a')"  # keys of any types, by str
    assert repr(where(big)) == "where('big')"
    unnamed = functools.partial(big)  # a callable without __qualname__: shown as itself
    assert repr(where(unnamed)) == f"where({unnamed!r})"
    assert repr(~is_instance("A") & where(even) | is_instance("B")) == (
        "((~is_instance('A') & where('even')) | is_instance('B'))"
    )


def test_relation_selectors_take_relation_type_names_and_match_relation_events_only() -> None:
    for select in (match_rtype, lambda *names: match_rtype_sets(names)):
        with pytest.raises(TypeError, match="type names"):
            select(3)
        bus = Bus()
        with pytest.raises(RegistrationError, match="can never match 'after_add_entity'"):
            bus.register(lambda e: None, "after_add_entity", select=select("Person"))


class Settled(Selector):
    """A user's selector that gives one answer for every key (it names none), and counts
    how often it is asked."""

    def __init__(self) -> None:
        self.asked = 0

    def specialize(self, spec: EventSpec, key: Hashable) -> bool | Callable[[Any], bool]:
        self.asked += 1
        return True

    def mentions(self, spec: EventSpec) -> frozenset[Hashable] | None:
        return frozenset()


@pytest.mark.parametrize("combine", ["&", "|"])
@pytest.mark.parametrize("settled_first", [True, False], ids=["settled-first", "settled-last"])
async def test_a_selector_that_names_no_key_is_settled_once_beside_a_negation(
    combine: str, settled_first: bool
) -> None:
    settled = Settled()
    parts: tuple[Selector, Selector] = (settled, ~is_instance("A"))
    left, right = parts if settled_first else parts[::-1]
    select = left & right if combine == "&" else left | right
    bus = Bus()
    seen: list[str] = []
    bus.hook("after_add_entity", select=select)(lambda e: seen.append(e.etype))
    settled.asked = 0
    for _ in range(50):
        for etype in ("A", "B", "C"):
            await bus.emit("after_add_entity", EntityEvent("after_add_entity", etype, 1))
    assert seen == (["B", "C"] if combine == "&" else ["A", "B", "C"]) * 50
    assert settled.asked <= 3  # once per entry built (A, the others), not per dispatch


class Tick(msgspec.Struct):
    """An unkeyed application payload."""

    n: int


async def test_a_users_selector_naming_no_keys_decides_per_payload_on_an_unkeyed_event() -> None:
    class EvenTicks(Selector):
        def specialize(self, spec: EventSpec, key: Hashable) -> bool | Callable[[Any], bool]:
            return lambda tick: tick.n % 2 == 0

    bus = Bus()
    bus.declare("tick", Tick)
    seen: list[int] = []
    bus.hook("tick", select=EvenTicks())(lambda tick: seen.append(tick.n))
    for n in range(5):
        await bus.emit("tick", Tick(n))
    assert seen == [0, 2, 4]


class Visit(msgspec.Struct):
    page: str | None


async def test_match_key_none_matches_the_key_none_only() -> None:
    bus = Bus()
    bus.declare("visited", Visit, key="page")
    seen: list[str | None] = []
    bus.hook("visited", select=match_key(None))(lambda visit: seen.append(visit.page))
    for _ in range(2):  # entries built, then found
        for page in ("home", None, "about"):
            await bus.emit("visited", Visit(page))
    assert seen == [None, None]


async def test_a_selector_failing_on_keys_it_does_not_name_is_asked_per_key() -> None:
    class OnlyA(Selector):
        """Names the key "A"; fails when asked about anything but a string."""

        def specialize(self, spec: EventSpec, key: Hashable) -> bool | Callable[[Any], bool]:
            return len(key) == 1 and key == "A"  # type: ignore[arg-type]

        def keys(self, spec: EventSpec) -> frozenset[Hashable] | None:
            return frozenset({"A"})

    assert await dispatched(OnlyA(), ("A", 1), ("B", 2), ("CC", 3), ("A", 4)) == ["A:1", "A:4"]


async def test_a_selector_returning_neither_bool_nor_predicate_is_refused_when_built() -> None:
    class Sloppy(Selector):
        def specialize(self, spec: EventSpec, key: Hashable) -> bool | Callable[[Any], bool]:
            return key == "A" or ("yes" if key == "B" else False)  # type: ignore[return-value]

        def keys(self, spec: EventSpec) -> frozenset[Hashable] | None:
            return frozenset({"A"})

    bus = Bus()
    bus.hook("after_add_entity", select=Sloppy())(lambda e: None)  # probed with "A": fine
    bus.hook("after_add_entity", select=is_instance("B"))(lambda e: None)  # "B" named: asked
    with pytest.raises(
        TypeError,
        match=r"returned 'yes' for 'B' on 'after_add_entity': specialize\(\) must return True, "
        "False or a predicate",
    ):
        bus.emit("after_add_entity", EntityEvent("after_add_entity", "B", 1))
