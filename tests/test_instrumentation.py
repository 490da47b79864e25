"""hookbus.instrumentation: entry factories and scope observers, through the public seam."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

import hookbus
from hookbus import Break, Bus, EntityEvent, HookRecursionError, Results, TransactionState
from hookbus.instrumentation import (
    NOTHING,
    Chosen,
    Entry,
    check_payload_event,
    check_result,
    default_entry,
    entry,
    note_hook,
    observe_scopes,
    recursion_error,
    use_entries,
)

ROOT = Path(__file__).resolve().parent.parent


def added(eid: int = 1) -> EntityEvent:
    return EntityEvent("after_add_entity", "Person", eid)


async def test_a_factory_wraps_the_default_entries_and_can_be_swapped_back() -> None:
    bus = Bus()
    spans: list[str] = []

    def traced(event: str, hooks: tuple[Chosen, ...], names_event: bool) -> Entry:
        inner = default_entry(event, hooks, names_event)
        if not hooks:
            return inner
        assert inner is not NOTHING

        async def emit(payload: Any) -> Break | None:
            spans.append(f"{event}:{[c.info.name.rsplit('.', 1)[1] for c in hooks]}")
            return await inner(payload)

        async def collect(payload: Any) -> Results:
            spans.append(f"collect {event}")
            return await inner.collect(payload)

        return entry(emit, collect)

    calls: list[int] = []

    def remember(event: EntityEvent) -> None:
        calls.append(event.eid)

    bus.hook("after_add_entity")(remember)
    await bus.emit("after_add_entity", added(1))  # an entry built before the swap: dropped
    previous = use_entries(bus, traced)
    assert previous is default_entry
    await bus.emit("after_add_entity", added(2))
    await bus.emit("after_update_entity", EntityEvent("after_update_entity", "P", 3))  # a miss
    assert await bus.collect("after_add_entity", added(4)) == [None]
    assert use_entries(bus, previous) is traced
    await bus.emit("after_add_entity", added(5))
    assert calls == [1, 2, 4, 5]
    assert spans == ["after_add_entity:['remember']", "collect after_add_entity"]


async def test_an_entry_running_hooks_itself_keeps_the_rules_with_the_helpers() -> None:
    def own(event: str, hooks: tuple[Chosen, ...], names_event: bool) -> Entry:
        if not hooks:
            return NOTHING

        async def emit(payload: Any) -> Break | None:
            if names_event:
                check_payload_event(event, payload)
            for chosen in hooks:
                try:
                    result = chosen.info.fn(payload)
                    if chosen.info.is_async:
                        await result
                    elif result is not None:
                        check_result(chosen.info.fn, event, result)
                except Break as broken:
                    return broken
                except RecursionError as exc:
                    raise recursion_error(exc, event) from None
                except Exception as exc:
                    note_hook(exc, chosen.info.fn, event)
                    raise
            return None

        async def collect(payload: Any) -> Results:
            results = Results()
            results.broken = await emit(payload)
            return results

        return entry(emit, collect)

    bus = Bus()
    use_entries(bus, own)

    async def forgot(event: EntityEvent) -> None:
        pass

    @bus.hook("after_add_entity")
    def plain(event: EntityEvent) -> Any:
        if event.eid == 1:
            raise LookupError("one")
        if event.eid == 2:
            return forgot(event)
        if event.eid == 3:
            raise Break("three")
        return None

    @bus.hook("after_update_entity")
    async def loop(event: EntityEvent) -> None:
        await bus.emit("after_update_entity", event)

    with pytest.raises(LookupError) as info:
        await bus.emit("after_add_entity", added(1))
    assert info.value.__notes__ == [
        f"raised by hook {plain.__module__}.{plain.__qualname__} on event 'after_add_entity'"
    ]
    with pytest.raises(TypeError, match="plain function that returned a coroutine"):
        await bus.emit("after_add_entity", added(2))
    broken = await bus.emit("after_add_entity", added(3))
    assert broken is not None and broken.value == "three"
    with pytest.raises(ValueError, match="whose event is 'after_update_entity'"):
        await bus.emit("after_add_entity", EntityEvent("after_update_entity", "Person", 4))
    with pytest.raises(HookRecursionError):
        await bus.emit("after_update_entity", EntityEvent("after_update_entity", "P", 5))


def test_use_entries_refuses_what_is_not_a_bus_or_a_factory() -> None:
    with pytest.raises(TypeError, match=r"hookbus\.Bus"):
        use_entries(object(), default_entry)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        use_entries(Bus(), "default")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="coroutine function"):
        entry(print, NOTHING.collect)  # type: ignore[arg-type]

    async def shared(payload: Any) -> None:
        pass

    async def collect(payload: Any) -> Results:
        return Results()

    assert entry(shared, collect) is shared
    assert entry(shared, collect) is shared  # the same pair again: the same entry
    with pytest.raises(TypeError, match="already the emit of another entry"):
        entry(shared, NOTHING.collect)


async def test_a_factory_returning_one_entry_for_two_keys_is_refused() -> None:
    bus = Bus()
    shared: list[Entry] = []

    def one_for_all(event: str, hooks: tuple[Chosen, ...], names_event: bool) -> Entry:
        if not shared:
            shared.append(default_entry(event, hooks, names_event))
        return shared[0] if hooks else NOTHING

    seen: list[str] = []
    bus.hook("after_add_entity", select=hookbus.is_instance("Person"))(lambda e: seen.append("P"))
    bus.hook("after_add_entity", select=hookbus.is_instance("Company"))(lambda e: seen.append("C"))
    use_entries(bus, one_for_all)
    await bus.emit("after_add_entity", added())
    with pytest.raises(
        TypeError, match="key 'Company' the entry it returned for 'after_add_entity' and 'Person'"
    ):
        bus.emit("after_add_entity", EntityEvent("after_add_entity", "Company", 2))  # at the call
    assert seen == ["P"]
    bus.hook("after_add_entity")(lambda e: seen.append("any"))  # the other keys' entry runs it
    await bus.emit("after_add_entity", added())
    with pytest.raises(TypeError, match="and key <any other key> the entry it returned for"):
        bus.emit("after_add_entity", EntityEvent("after_add_entity", "Other", 3))
    assert seen == ["P", "P"]  # the factory's one entry runs the hooks it was first built for


class Watch:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.scopes: list[hookbus.Transaction] = []  # the scope of each entry of ``seen``

    def moved(self, tx: hookbus.Transaction, old: TransactionState, new: TransactionState) -> None:
        self.seen.append(f"{old.name}>{new.name}")
        self.scopes.append(tx)

    def ended(self, tx: hookbus.Transaction) -> None:
        self.seen.append("ended")
        self.scopes.append(tx)


async def test_a_scope_observer_sees_every_move_and_the_end_until_it_is_replaced() -> None:
    watch = Watch()
    assert observe_scopes(watch) is None
    try:
        async with hookbus.transaction() as committed:
            pass
        with pytest.raises(LookupError):
            async with hookbus.transaction() as rolled_back:
                raise LookupError
    finally:
        assert observe_scopes(None) is watch
    async with hookbus.transaction():
        pass
    assert watch.seen[0] == "NEW>ACTIVE" and watch.seen.count("ended") == 2
    assert "COMMITTING>COMMITTED" in watch.seen
    assert any(move.endswith(">ROLLED_BACK") for move in watch.seen)
    ends = watch.seen.index("ended") + 1
    assert watch.scopes == [committed] * ends + [rolled_back] * (len(watch.seen) - ends)


def test_hookbus_otel_imports_only_public_names() -> None:
    private = []
    for path in sorted((ROOT / "adapters" / "hookbus_otel").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                parts = node.module.split(".")
                if parts[0] == "hookbus" and any(p.startswith("_") for p in parts):
                    private.append(f"{path.name}: from {node.module}")
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("bus", "hookbus")
                and node.attr.startswith("_")
            ):
                private.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert private == []
