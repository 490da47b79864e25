"""Selectors: the static part settled per key, the dynamic part per dispatch."""

from __future__ import annotations

import pytest

from hookbus import (
    Bus,
    EntityEvent,
    RelationEvent,
    is_instance,
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
