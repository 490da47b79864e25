"""hooks_control: categories enabled per block, per task, protected categories."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hookbus import (
    ALLOW_ALL,
    DENY_ALL,
    Bus,
    EntityEvent,
    RegistrationError,
    current_control,
    hooks_control,
)


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


def test_protected_category_cannot_be_disabled(bus: Bus) -> None:
    with pytest.raises(RegistrationError, match="protected categories cannot be disabled"):
        hooks_control(ALLOW_ALL, "activeintegrity")


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
