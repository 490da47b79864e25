"""hooks_control: categories enabled per block, per task, protected categories."""

from __future__ import annotations

import asyncio
import gc
import sys
import tracemalloc
import warnings
from contextlib import nullcontext
from typing import Any

import msgspec
import pytest

from hookbus import (
    ALLOW_ALL,
    DENY_ALL,
    Bus,
    ControlMode,
    EntityEvent,
    RegistrationError,
    UnknownCategoryWarning,
    current_control,
    hooks_control,
    is_instance,
)
from hookbus._index import MAX_FORMS


@pytest.fixture
def bus() -> Bus:
    bus = Bus(protected=("activeintegrity",))
    return bus


@pytest.fixture
def calls(bus: Bus) -> list[str]:
    calls: list[str] = []
    for category in ("integrity", "notification", "activeintegrity", "metadata"):
        bus.register(lambda e, c=category: calls.append(c), "after_add_entity", category=category)
    return calls


def added() -> EntityEvent:
    return EntityEvent("after_add_entity", "Person", 1)


async def run(bus: Bus, calls: list[str]) -> list[str]:
    calls.clear()
    await bus.emit("after_add_entity", added())
    emitted = list(calls)
    assert await bus.collect("after_add_entity", added()) == [None] * len(emitted)
    assert calls == emitted * 2  # collect ran the same hooks
    return emitted


async def test_allow_all_disables_the_named_categories(bus: Bus, calls: list[str]) -> None:
    with hooks_control(ALLOW_ALL, "integrity", "metadata"):
        assert await run(bus, calls) == ["notification", "activeintegrity"]
    assert await run(bus, calls) == ["integrity", "notification", "activeintegrity", "metadata"]


async def test_deny_all_keeps_only_the_named_and_protected_categories(
    bus: Bus, calls: list[str]
) -> None:
    with hooks_control(DENY_ALL, "notification"):
        assert await run(bus, calls) == ["notification", "activeintegrity"]
    with hooks_control(DENY_ALL):
        assert await run(bus, calls) == ["activeintegrity"]


async def test_innermost_block_decides_and_the_outer_state_comes_back(
    bus: Bus, calls: list[str]
) -> None:
    with hooks_control(DENY_ALL, "integrity"):
        with hooks_control(ALLOW_ALL, "integrity"):
            assert await run(bus, calls) == ["notification", "activeintegrity", "metadata"]
        assert await run(bus, calls) == ["integrity", "activeintegrity"]
    assert current_control() is None


async def test_concurrent_tasks_never_see_each_others_state(bus: Bus, calls: list[str]) -> None:
    seen: dict[str, list[str]] = {}
    inside = asyncio.Event()
    other_done = asyncio.Event()

    async def restricted() -> None:
        with hooks_control(DENY_ALL, "metadata"):
            inside.set()
            await other_done.wait()  # the other task dispatches while this block is open
            seen["restricted"] = await hooks_seen()

    async def hooks_seen() -> list[str]:
        mine: list[str] = []
        results: Any = await bus.collect("after_add_entity", added())
        mine.extend(str(len(results)))
        return mine

    async def free() -> None:
        await inside.wait()
        seen["free"] = await hooks_seen()
        other_done.set()

    await asyncio.gather(restricted(), free())
    assert seen == {"restricted": ["2"], "free": ["4"]}


async def test_tasks_started_inside_a_block_inherit_it(bus: Bus, calls: list[str]) -> None:
    with hooks_control(DENY_ALL, "integrity"):
        task = asyncio.create_task(bus.emit("after_add_entity", added()))
    await task
    assert calls == ["integrity", "activeintegrity"]


async def test_a_protected_category_stays_enabled_and_naming_it_warns(
    bus: Bus, calls: list[str]
) -> None:
    with (
        pytest.warns(UnknownCategoryWarning, match="'activeintegrity' is protected"),
        hooks_control(ALLOW_ALL, "activeintegrity", "metadata"),
    ):
        assert await run(bus, calls) == ["integrity", "notification", "activeintegrity"]


async def test_what_one_bus_protects_changes_nothing_for_another(bus: Bus) -> None:
    other = Bus()
    seen: list[str] = []
    other.register(lambda e: seen.append("other"), "after_add_entity", category="activeintegrity")
    bus.register(lambda e: seen.append("bus"), "after_add_entity", category="activeintegrity")
    with warnings.catch_warnings(), hooks_control(ALLOW_ALL, "activeintegrity"):
        warnings.simplefilter("ignore", UnknownCategoryWarning)  # protected on `bus`
        await bus.emit("after_add_entity", added())
        await other.emit("after_add_entity", added())  # refused before: another bus's
    assert seen == ["bus"]


async def test_a_misspelled_category_warns_once_naming_the_closest(
    bus: Bus, calls: list[str]
) -> None:
    with (
        pytest.warns(UnknownCategoryWarning, match="'integrty'.*did you mean 'integrity'"),
        hooks_control(ALLOW_ALL, "integrty"),
    ):
        await bus.emit("after_add_entity", added())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per name: no second warning
        with hooks_control(DENY_ALL, "integrty", "notification"):
            await bus.emit("after_add_entity", added())
        with hooks_control(ALLOW_ALL, "mailing"):  # close to nothing here: meant elsewhere
            await bus.emit("after_add_entity", added())


async def test_ever_new_control_states_keep_memory_bounded(bus: Bus, calls: list[str]) -> None:
    async def open_states(first: int, count: int) -> None:
        for i in range(first, first + count):
            with hooks_control(ALLOW_ALL if i % 2 else DENY_ALL, f"c{i}", "metadata"):
                await bus.emit("after_add_entity", added())

    tracemalloc.start()  # what was allocated before is not traced: fill every bound first
    try:
        await open_states(0, 6000)
        before = tracemalloc.get_traced_memory()[0]
        await open_states(6000, 6000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 200_000, f"{grown} bytes kept by 6,000 more control states"


def test_bad_control_arguments_are_refused() -> None:
    with pytest.raises(RegistrationError, match="ALLOW_ALL or DENY_ALL"):
        hooks_control("allow", "integrity")  # type: ignore[arg-type]
    with pytest.raises(RegistrationError, match="non-empty string"):
        hooks_control(ALLOW_ALL, "")


async def test_hooks_for_follows_the_control_state(bus: Bus, calls: list[str]) -> None:
    with hooks_control(DENY_ALL, "integrity"):
        assert [h.category for h in bus.hooks_for("after_add_entity", "Person")] == [
            "integrity",
            "activeintegrity",
        ]


async def test_a_hook_registered_after_a_dispatch_under_a_state_runs_under_it(
    bus: Bus, calls: list[str]
) -> None:
    with hooks_control(ALLOW_ALL, "integrity"):
        assert await run(bus, calls) == ["notification", "activeintegrity", "metadata"]
    late = bus.register(lambda e: calls.append("late"), "after_add_entity", category="mailing")
    with hooks_control(ALLOW_ALL, "integrity"):
        assert await run(bus, calls) == ["notification", "activeintegrity", "metadata", "late"]
    bus.unregister(late)
    with hooks_control(ALLOW_ALL, "integrity"):
        assert await run(bus, calls) == ["notification", "activeintegrity", "metadata"]


class Tick(msgspec.Struct):
    """An application payload with no ``key`` attribute."""

    n: int


async def test_a_key_less_event_dispatched_under_deny_all_leaves_its_category_enabled_outside(
    bus: Bus,
) -> None:
    bus.declare("tick", Tick)
    seen: list[int] = []
    bus.hook("tick", category="notification")(lambda e: seen.append(e.n))
    with hooks_control(DENY_ALL):  # the first dispatch of the event, then a cached one
        await bus.emit("tick", Tick(0))
        await bus.emit("tick", Tick(1))
    await bus.emit("tick", Tick(2))
    await bus.emit("tick", Tick(3))
    with hooks_control(DENY_ALL):
        await bus.emit("tick", Tick(4))
    await bus.emit("tick", Tick(5))
    assert seen == [2, 3, 5]


async def test_the_block_gives_the_state_it_puts_in_force(bus: Bus, calls: list[str]) -> None:
    with hooks_control(DENY_ALL, "integrity", "notification") as state:
        assert state is current_control()
        assert state.mode is DENY_ALL
        assert state.categories == {"integrity", "notification"}
        assert state.enabled("integrity", frozenset())
        assert not state.enabled("metadata", frozenset())
        assert state.enabled("metadata", frozenset({"metadata"}))  # protected on that bus
        with hooks_control(ALLOW_ALL) as inner:
            assert inner is current_control() and inner is not state
        assert current_control() is state
    assert current_control() is None
    with hooks_control(DENY_ALL, "notification", "integrity") as same:
        assert same is state  # equal states are one object


def keyed_bus(seen: list[str]) -> Bus:
    """Hooks on two entity types in several categories, and one on any type."""
    bus = Bus()
    for name, select, category in (
        ("person", is_instance("Person"), "integrity"),
        ("person-meta", is_instance("Person"), "metadata"),
        ("company", is_instance("Company"), "notification"),
        ("any", None, "metadata"),
    ):
        bus.register(
            lambda e, n=name: seen.append(n), "after_add_entity", select=select, category=category
        )
    return bus


@pytest.mark.parametrize("order", [("Person", "Company", "Other"), ("Other", "Company", "Person")])
async def test_under_a_state_each_key_runs_its_own_hooks(order: tuple[str, ...]) -> None:
    seen: list[str] = []
    bus = keyed_bus(seen)

    async def run_for(etype: str) -> list[str]:
        seen.clear()
        await bus.emit("after_add_entity", EntityEvent("after_add_entity", etype, 1))
        return list(seen)

    expected: dict[tuple[ControlMode, str] | None, dict[str, list[str]]] = {
        (ALLOW_ALL, "metadata"): {"Person": ["person"], "Company": ["company"], "Other": []},
        None: {
            "Person": ["person", "person-meta", "any"],
            "Company": ["company", "any"],
            "Other": ["any"],
        },
        (DENY_ALL, "metadata"): {
            "Person": ["person-meta", "any"],
            "Company": ["any"],
            "Other": ["any"],
        },
        (DENY_ALL, "notification"): {"Person": [], "Company": ["company"], "Other": []},
    }
    for _ in range(2):  # entries built, then found again
        for state, hooks in expected.items():
            with nullcontext() if state is None else hooks_control(*state):
                assert {etype: await run_for(etype) for etype in order} == hooks, state


async def test_states_of_a_form_dropped_past_the_bound_keep_dispatching() -> None:
    seen: list[str] = []
    bus = keyed_bus(seen)
    for i in range(8):  # more categories, for more forms than a bus keeps
        bus.register(lambda e: None, "after_update_entity", category=f"c{i}")
    first = hooks_control(ALLOW_ALL, "metadata")
    with first:
        await bus.emit("after_add_entity", EntityEvent("after_add_entity", "Person", 1))
    for n in range(1, 80):  # as many forms: each disables another subset of c0..c7
        with hooks_control(ALLOW_ALL, *(f"c{i}" for i in range(8) if n >> i & 1)):
            await bus.emit("after_add_entity", EntityEvent("after_add_entity", "Person", 1))
    seen.clear()
    with hooks_control(ALLOW_ALL, "metadata"):  # the first form is long dropped
        await bus.emit("after_add_entity", EntityEvent("after_add_entity", "Company", 1))
        await bus.emit("after_add_entity", EntityEvent("after_add_entity", "Person", 1))
    assert seen == ["company", "person"]


async def test_each_name_of_a_state_is_reported_on_its_own() -> None:
    bus = Bus(protected=("activeintegrity",))
    for category in ("integrity", "integrals", "integrator", "integrities", "metadata", "notify"):
        bus.register(lambda e: None, "after_add_entity", category=category)
    # In the order reported (sorted): close to nothing here, protected, a typo with four
    # close categories, a category of this bus, a typo with one.
    names = ("aaa", "activeintegrity", "integrty", "metadata", "notifyy")
    with warnings.catch_warnings(record=True) as caught, hooks_control(ALLOW_ALL, *names):
        warnings.simplefilter("always")
        await bus.emit("after_add_entity", added())
    assert [str(w.message) for w in caught] == [
        "hooks_control(ALLOW_ALL, 'activeintegrity'): 'activeintegrity' is protected on this "
        "bus, its hooks stay enabled",
        "hooks_control names category 'integrty', which no hook on this bus has; did you mean "
        "'integrity' or 'integrator' or 'integrities'?",
        "hooks_control names category 'notifyy', which no hook on this bus has; did you mean "
        "'notify'?",
    ]
    assert {w.category for w in caught} == {UnknownCategoryWarning}


async def test_the_warning_points_at_the_emit(bus: Bus, calls: list[str]) -> None:
    with warnings.catch_warnings(record=True) as caught, hooks_control(ALLOW_ALL, "metadta"):
        warnings.simplefilter("always")
        await bus.emit("after_add_entity", added())
        line = sys._getframe().f_lineno - 1
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, line)]


async def test_a_state_whose_form_was_just_dropped_dispatches_a_key_new_to_it() -> None:
    seen: list[str] = []
    bus = keyed_bus(seen)
    for i in range(8):
        bus.register(lambda e: None, "after_update_entity", category=f"c{i}")
    first = hooks_control(ALLOW_ALL, "metadata")
    with first:
        await bus.emit("after_add_entity", EntityEvent("after_add_entity", "Person", 1))
    for n in range(1, MAX_FORMS):  # the last one drops the first state's form, only it
        with hooks_control(ALLOW_ALL, *(f"c{i}" for i in range(8) if n >> i & 1)):
            await bus.emit("after_add_entity", EntityEvent("after_add_entity", "Person", 1))
    seen.clear()
    with first:
        await bus.emit("after_add_entity", EntityEvent("after_add_entity", "Company", 1))
        await bus.emit("after_add_entity", EntityEvent("after_add_entity", "Person", 1))
    assert seen == ["company", "person"]


async def test_ever_new_forms_of_states_keep_memory_bounded() -> None:
    bus = Bus()
    for i in range(12):
        bus.register(lambda e: None, "after_add_entity", category=f"c{i}")
    # Each state disables another subset of the bus's categories: each is a form of its own.
    states = [
        hooks_control(ALLOW_ALL, *(f"c{i}" for i in range(12) if n >> i & 1)) for n in range(1, 901)
    ]

    async def dispatch_under(blocks: list[hooks_control]) -> None:
        for block in blocks:
            with block:
                await bus.emit("after_add_entity", added())

    await dispatch_under(states[:300])  # past every bound: forms, states, their views
    tracemalloc.start()  # what was allocated before is not traced
    try:
        await dispatch_under(states[300:400])  # what the first ones traced leave for good
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        await dispatch_under(states[400:])
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 100_000, f"{grown} bytes kept by 500 more forms"
