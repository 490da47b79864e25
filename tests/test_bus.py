"""The bus: registration, order, dispatch, Break, collect, errors, recursion."""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
import tracemalloc
import warnings
from collections.abc import Callable, Hashable
from typing import Any

import anyio
import msgspec
import pytest

import hookbus
from hookbus import (
    Break,
    Bus,
    EntityEvent,
    RegistrationError,
    RelationEvent,
    ServerEvent,
    UnknownEventError,
    is_instance,
    match_rtype,
    where,
)


@pytest.fixture
def bus() -> Bus:
    return Bus()


def added(etype: str = "Person", eid: int = 1, **edited: Any) -> EntityEvent:
    return EntityEvent("after_add_entity", etype, eid, edited)


async def test_hooks_run_by_priority_then_registration_order_mixing_sync_and_async(
    bus: Bus,
) -> None:
    calls: list[str] = []

    @bus.hook("after_add_entity", priority=10)
    async def late(event: EntityEvent) -> None:
        calls.append("late")

    @bus.hook("after_add_entity")
    def first_sync(event: EntityEvent) -> None:
        calls.append("first_sync")

    @bus.hook("after_add_entity")
    async def second_async(event: EntityEvent) -> None:
        calls.append("second_async")

    @bus.hook("after_add_entity", priority=-5)
    def earliest(event: EntityEvent) -> None:
        calls.append("earliest")

    assert await bus.emit("after_add_entity", added()) is None
    assert calls == ["earliest", "first_sync", "second_async", "late"]
    assert [h.name.rsplit(".", 1)[1] for h in bus.hooks_for("after_add_entity", "Person")] == [
        "earliest",
        "first_sync",
        "second_async",
        "late",
    ]


async def test_every_hook_gets_the_same_payload_object(bus: Bus) -> None:
    seen: list[object] = []
    bus.hook("after_add_entity")(seen.append)
    bus.hook("after_add_entity")(lambda event: seen.append(event))
    payload = added()
    await bus.emit("after_add_entity", payload)
    assert len(seen) == 2
    assert all(item is payload for item in seen)


async def test_selectors_pick_hooks_by_entity_type(bus: Bus) -> None:
    calls: list[str] = []

    @bus.hook("after_add_entity", select=is_instance("Person"))
    async def person(event: EntityEvent) -> None:
        calls.append(f"person:{event.eid}")

    @bus.hook("after_add_entity", select=is_instance("Company", "Person"))
    async def either(event: EntityEvent) -> None:
        calls.append(f"either:{event.eid}")

    await bus.emit("after_add_entity", added("Person", 1))
    await bus.emit("after_add_entity", added("Company", 2))
    await bus.emit("after_add_entity", added("Invoice", 3))
    assert calls == ["person:1", "either:1", "either:2"]


async def test_a_hook_registered_after_a_dispatch_is_seen_by_the_next_one(bus: Bus) -> None:
    calls: list[str] = []
    bus.hook("after_add_entity", select=is_instance("Person"))(lambda e: calls.append("one"))
    await bus.emit("after_add_entity", added())
    await bus.emit("server_startup", ServerEvent("server_startup"))
    bus.hook("after_add_entity", select=is_instance("Person"))(lambda e: calls.append("two"))
    bus.hook("server_startup")(lambda e: calls.append("startup"))
    await bus.emit("after_add_entity", added())
    await bus.emit("server_startup", ServerEvent("server_startup"))
    assert calls == ["one", "one", "two", "startup"]


async def test_unregistered_hook_stops_running(bus: Bus) -> None:
    calls: list[str] = []

    @bus.hook("after_add_entity")
    async def gone(event: EntityEvent) -> None:
        calls.append("gone")

    info = bus.hook("after_add_entity")(lambda e: calls.append("kept"))
    await bus.emit("after_add_entity", added())
    bus.unregister(gone)
    await bus.emit("after_add_entity", added())
    assert calls == ["gone", "kept", "kept"]
    assert info is not None
    with pytest.raises(LookupError, match="is not registered on this bus"):
        bus.unregister(gone)


async def test_dynamic_selector_is_checked_per_dispatch(bus: Bus) -> None:
    calls: list[int] = []
    adult = where(lambda event: event.edited.get("age", 0) >= 18)

    @bus.hook("after_add_entity", select=is_instance("Person") & adult)
    async def greet_adult(event: EntityEvent) -> None:
        calls.append(event.eid)

    await bus.emit("after_add_entity", added("Person", 1, age=30))
    await bus.emit("after_add_entity", added("Person", 2, age=3))
    await bus.emit("after_add_entity", added("Company", 3, age=99))
    assert calls == [1]


async def test_break_stops_the_remaining_hooks_and_reaches_the_emitter(bus: Bus) -> None:
    calls: list[str] = []

    @bus.hook("before_delete_entity")
    async def soft_delete(event: EntityEvent) -> None:
        calls.append("soft_delete")
        raise Break("soft-deleted")

    @bus.hook("before_delete_entity", priority=1)
    async def never(event: EntityEvent) -> None:
        calls.append("never")

    broken = await bus.emit("before_delete_entity", EntityEvent("before_delete_entity", "P", 1))
    assert isinstance(broken, Break)
    assert broken.value == "soft-deleted"
    assert calls == ["soft_delete"]


async def test_collect_returns_results_in_order_and_the_break(bus: Bus) -> None:
    bus.hook("after_add_entity")(lambda e: 1)

    @bus.hook("after_add_entity")
    async def two(event: EntityEvent) -> int:
        return 2

    @bus.hook("after_add_entity", select=where(lambda e: e.eid == 7))
    def stop(event: EntityEvent) -> None:
        raise Break("enough")

    bus.hook("after_add_entity")(lambda e: 4)

    results = await bus.collect("after_add_entity", added(eid=1))
    assert results == [1, 2, 4]
    assert results.broken is None
    results = await bus.collect("after_add_entity", added(eid=7))
    assert results == [1, 2]
    assert results.broken is not None and results.broken.value == "enough"


async def test_hook_exception_propagates_with_a_note_naming_hook_and_event(bus: Bus) -> None:
    @bus.hook("after_add_entity", select=is_instance("Person"))
    async def explode(event: EntityEvent) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom") as info:
        await bus.emit("after_add_entity", added())
    assert info.value.__notes__ == [
        f"raised by hook {__name__}.test_hook_exception_propagates_with_a_note_naming_hook_and_"
        "event.<locals>.explode on event 'after_add_entity'"
    ]
    with pytest.raises(ValueError, match="boom"):
        await bus.collect("after_add_entity", added())


async def test_validation_error_serialises_for_a_web_api(bus: Bus) -> None:
    @bus.hook("before_add_entity", select=is_instance("Person"), category="integrity")
    async def person_age_range(event: EntityEvent) -> None:
        if "age" in event.edited and not 0 <= event.edited["age"] <= 120:
            raise hookbus.ValidationError(event.eid, {"age": "age must be between 0 and 120"})

    with pytest.raises(hookbus.ValidationError) as info:
        await bus.emit(
            "before_add_entity", EntityEvent("before_add_entity", "Person", 5, {"age": 130})
        )
    assert msgspec.json.decode(info.value.to_json()) == {
        "eid": 5,
        "errors": {"age": "age must be between 0 and 120"},
    }


async def test_endless_hook_loop_raises_hook_recursion_error_naming_the_chain(bus: Bus) -> None:
    @bus.hook("after_update_entity")
    async def touch_again(event: EntityEvent) -> None:
        await bus.emit("after_add_entity", EntityEvent("after_add_entity", "P", event.eid))

    @bus.hook("after_add_entity")
    async def and_again(event: EntityEvent) -> None:
        await bus.emit("after_update_entity", EntityEvent("after_update_entity", "P", event.eid))

    with pytest.raises(hookbus.HookRecursionError) as info:
        await bus.emit("after_update_entity", EntityEvent("after_update_entity", "P", 1))
    chain = info.value.chain
    assert type(info.value.__cause__) is RecursionError  # the interpreter's, kept
    assert chain[0] == "after_update_entity"
    assert set(chain) == {"after_update_entity", "after_add_entity"}
    assert len(chain) > 50
    assert "after_update_entity -> after_add_entity -> after_update_entity" in str(info.value)
    # the bus is usable afterwards
    bus.unregister(and_again)
    assert await bus.emit("after_update_entity", EntityEvent("after_update_entity", "P", 1)) is None


async def test_hooks_may_re_enter_the_bus(bus: Bus) -> None:
    calls: list[str] = []

    @bus.hook("after_add_relation", select=match_rtype("boss"))
    async def promote(event: RelationEvent) -> None:
        calls.append("relation")
        await bus.emit("after_update_entity", EntityEvent("after_update_entity", "P", event.eidto))

    @bus.hook("after_update_entity")
    async def updated(event: EntityEvent) -> None:
        calls.append(f"updated:{event.eid}")

    await bus.emit("after_add_relation", RelationEvent("after_add_relation", "boss", 1, 2))
    assert calls == ["relation", "updated:2"]


def test_typo_in_event_name_is_refused_at_registration_with_suggestions(bus: Bus) -> None:
    with pytest.raises(UnknownEventError) as info:

        @bus.hook("after_add_entiy")
        async def typo(event: EntityEvent) -> None: ...

    assert "after_add_entity" in info.value.suggestions
    assert "did you mean 'after_add_entity'" in str(info.value)
    assert bus.registered() == ()


async def test_emitting_an_undeclared_event_or_a_wrong_payload_fails_clearly(bus: Bus) -> None:
    with pytest.raises(UnknownEventError):
        await bus.emit("after_ad_entity", added())
    with pytest.raises(TypeError, match="carries EntityEvent payloads, not ServerEvent"):
        await bus.emit("after_add_entity", ServerEvent("server_startup"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"select": "Person"}, "select must be a Selector"),
        ({"category": ""}, "a category is a non-empty string"),
        ({"priority": "high"}, "priority must be an int"),
        ({"priority": True}, "priority must be an int"),
        ({"select": match_rtype("boss")}, r"<lambda>: match_rtype\('boss'\) can never match"),
    ],
)
def test_bad_registrations_are_refused(bus: Bus, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(RegistrationError, match=message):
        bus.register(lambda event: None, "after_add_entity", **kwargs)
    assert bus.registered() == ()


def test_hooks_must_take_one_positional_argument(bus: Bus) -> None:
    with pytest.raises(RegistrationError, match="exactly one positional argument"):
        bus.register(lambda: None, "after_add_entity")
    with pytest.raises(RegistrationError, match="exactly one positional argument"):
        bus.register(lambda a, b: None, "after_add_entity")
    with pytest.raises(RegistrationError, match="must be callable"):
        bus.register(42, "after_add_entity")  # type: ignore[call-overload]


def test_registering_the_same_function_twice_is_refused(bus: Bus) -> None:
    def once(event: Any) -> None: ...

    bus.register(once, "after_add_entity")
    with pytest.raises(RegistrationError, match="already registered"):
        bus.register(once, "after_update_entity")


async def test_class_based_hooks(bus: Bus) -> None:
    calls: list[tuple[str, int]] = []

    @bus.register
    class PersonAge(hookbus.Hook):
        events = ("before_add_entity", "before_update_entity")
        select = is_instance("Person")
        category = "integrity"
        priority = 3

        async def __call__(self, event: EntityEvent) -> None:
            calls.append((event.event, event.eid))

    await bus.emit("before_add_entity", EntityEvent("before_add_entity", "Person", 1))
    await bus.emit("before_update_entity", EntityEvent("before_update_entity", "Company", 2))
    assert calls == [("before_add_entity", 1)]
    (info,) = bus.hooks_for("before_add_entity", "Person")
    assert (info.category, info.priority, info.is_async) == ("integrity", 3, True)
    assert info.name.endswith("PersonAge")
    bus.unregister(info)
    assert bus.hooks_for("before_add_entity", "Person") == ()


async def test_application_events_are_declared_with_their_payload_and_key(bus: Bus) -> None:
    class InvoicePaid(msgspec.Struct):
        customer: str
        amount: int

    bus.declare("invoice_paid", InvoicePaid, key="customer")
    assert bus.declare("invoice_paid", InvoicePaid, key="customer").key == "customer"
    seen: list[int] = []
    bus.hook("invoice_paid", select=hookbus.match_key("acme"))(lambda e: seen.append(e.amount))
    await bus.emit("invoice_paid", InvoicePaid("acme", 10))
    await bus.emit("invoice_paid", InvoicePaid("other", 20))
    assert seen == [10]
    assert msgspec.json.encode(InvoicePaid("acme", 1)) == b'{"customer":"acme","amount":1}'
    assert bus.declare("invoice_paid", InvoicePaid).key == "customer"
    with pytest.raises(RegistrationError, match="already declared"):
        bus.declare("invoice_paid", InvoicePaid, key="amount")
    with pytest.raises(
        RegistrationError, match=r"event 'invoice_refunded': .*InvoicePaid has no field 'client'"
    ):
        bus.declare("invoice_refunded", InvoicePaid, key="client")
    with pytest.raises(RegistrationError, match=r"msgspec\.Struct"):
        bus.declare("plain", dict)
    with pytest.raises(RegistrationError, match="identifier"):
        bus.declare("not an event", InvoicePaid)


async def test_unkeyed_application_event(bus: Bus) -> None:
    class Tick(msgspec.Struct):
        n: int

    bus.declare("tick", Tick)
    seen: list[int] = []
    bus.hook("tick")(lambda e: seen.append(e.n))
    with pytest.raises(RegistrationError, match="can never match"):
        bus.hook("tick", select=is_instance("Person"))(lambda e: None)
    await bus.emit("tick", Tick(1))
    assert seen == [1]


async def test_emit_returns_a_real_coroutine_for_tasks(bus: Bus) -> None:
    seen: list[int] = []
    bus.hook("after_add_entity")(lambda e: seen.append(e.eid))
    await asyncio.create_task(bus.emit("after_add_entity", added(eid=1)))
    async with anyio.create_task_group() as tg:
        tg.start_soon(bus.emit, "after_add_entity", added(eid=2))
    assert seen == [1, 2]


async def test_edited_gives_old_and_new_values_and_after_hooks_get_a_read_only_view() -> None:
    edited = hookbus.Edited({"age": 41}, old={"age": 40, "name": "Ann"})
    assert edited.oldnewvalue("age") == (40, 41)
    view = edited.readonly()
    assert view.oldnewvalue("age") == (40, 41)
    with pytest.raises(TypeError):
        view["age"] = 3  # type: ignore[index]
    del edited["age"]
    assert "age" not in view


async def test_a_hook_registered_during_a_dispatch_runs_from_the_next_one(bus: Bus) -> None:
    calls: list[str] = []

    @bus.hook("after_add_entity")
    async def register_another(event: EntityEvent) -> None:
        calls.append("first")
        if len(calls) == 1:
            bus.hook("after_add_entity", priority=5)(lambda e: calls.append("late comer"))

    await bus.emit("after_add_entity", added())
    assert calls == ["first"]
    await bus.emit("after_add_entity", added())
    assert calls == ["first", "first", "late comer"]


async def test_many_distinct_keys_are_dispatched_correctly_past_the_cache_bound(
    bus: Bus,
) -> None:
    class Ping(msgspec.Struct):
        key: int

    bus.declare("ping", Ping)
    seen: list[int] = []
    bus.hook("ping", select=hookbus.match_key(4999))(lambda e: seen.append(e.key))
    for key in range(5000):  # more keys than the index caches for one event
        await bus.emit("ping", Ping(key))
    assert seen == [4999]


async def test_hook_decorator_on_a_hook_class_keeps_its_category_and_priority(bus: Bus) -> None:
    @bus.hook("after_add_entity")
    class Audit(hookbus.Hook):
        category = "integrity"
        priority = 7

        def __call__(self, event: EntityEvent) -> None: ...

    (info,) = bus.hooks_for("after_add_entity", "Person")
    assert (info.category, info.priority) == ("integrity", 7)
    with hookbus.hooks_control(hookbus.ALLOW_ALL, "integrity"):
        assert bus.hooks_for("after_add_entity", "Person") == ()


async def test_bound_methods_register_once_and_unregister(bus: Bus) -> None:
    class Mailer:
        def __init__(self) -> None:
            self.sent: list[int] = []

        def on_added(self, event: EntityEvent) -> None:
            self.sent.append(event.eid)

    mailer = Mailer()
    bus.register(mailer.on_added, "after_add_entity")
    with pytest.raises(RegistrationError, match="already registered"):
        bus.register(mailer.on_added, "after_add_entity")
    await bus.emit("after_add_entity", added(eid=1))
    bus.unregister(mailer.on_added)
    await bus.emit("after_add_entity", added(eid=2))
    assert mailer.sent == [1]


def test_a_selector_that_cannot_work_is_refused_at_registration(bus: Bus) -> None:
    class Forgetful(hookbus.Selector):
        def specialize(self, spec: Any, key: Any) -> Any:
            pass  # forgot to return

    class Unfinished(hookbus.Selector):
        pass

    with pytest.raises(RegistrationError, match="must return True, False or a predicate"):
        bus.register(lambda e: None, "after_add_entity", select=Forgetful())
    with pytest.raises(RegistrationError, match="fails on 'after_add_entity'"):
        bus.register(lambda e: None, "after_add_entity", select=Unfinished())
    assert bus.registered() == ()


async def test_a_payload_contradicting_its_dispatch_never_reaches_a_hook(bus: Bus) -> None:
    seen: list[str] = []
    bus.hook("after_add_entity")(lambda e: seen.append("sync"))
    wrong = EntityEvent("before_add_entity", "Person", 1)
    with pytest.raises(ValueError, match="given a EntityEvent whose event is 'before_add_entity'"):
        await bus.emit("after_add_entity", wrong)

    @bus.hook("after_add_entity")
    async def also_async(event: EntityEvent) -> None:
        seen.append("async")

    with pytest.raises(ValueError, match="contradicts its dispatch"):
        await bus.emit("after_add_entity", wrong)
    with pytest.raises(ValueError, match="contradicts its dispatch"):
        await bus.collect("after_add_entity", wrong)
    bus.unregister(also_async)
    with pytest.raises(ValueError, match="contradicts its dispatch"):
        await bus.collect("after_add_entity", wrong)
    assert seen == []
    equal = "".join(["after_add", "_entity"])  # equal, not the same object: fine
    await bus.emit(equal, EntityEvent("after_add_entity", "Person", 1))
    await bus.emit("after_add_entity", EntityEvent(equal, "Person", 1))
    assert seen == ["sync", "sync"]


async def test_two_buses_key_one_payload_class_by_two_fields_and_leave_it_untouched() -> None:
    class Order(msgspec.Struct):
        customer: str
        region: str

    class Tick(msgspec.Struct):
        n: int

    before = dict(vars(Order)), dict(vars(Tick))
    by_customer, by_region = Bus(), Bus()
    by_customer.declare("order_placed", Order, key="customer")
    by_region.declare("order_placed", Order, key="region")
    by_region.declare("tick", Tick)
    seen: list[str] = []
    by_customer.hook("order_placed", select=hookbus.match_key("acme"))(
        lambda e: seen.append(f"customer:{e.customer}")
    )
    by_region.hook("order_placed", select=hookbus.match_key("eu"))(
        lambda e: seen.append(f"region:{e.region}")
    )
    by_region.hook("tick")(lambda e: seen.append(f"tick:{e.n}"))
    for order in (Order("acme", "us"), Order("other", "eu")):
        await by_customer.emit("order_placed", order)
        await by_region.emit("order_placed", order)
    await by_region.emit("tick", Tick(1))
    assert seen == ["customer:acme", "region:eu", "tick:1"]
    assert (dict(vars(Order)), dict(vars(Tick))) == before
    assert not hasattr(Order, "key") and not hasattr(Tick, "key")


async def test_a_plain_hook_returning_a_coroutine_is_refused_naming_it(bus: Bus) -> None:
    ran: list[int] = []

    async def work(event: EntityEvent) -> None:
        ran.append(event.eid)

    def forgets_to_await(event: EntityEvent) -> Any:
        return work(event)

    bus.register(forgets_to_await, "after_add_entity")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the coroutine is closed: no "never awaited" on top
        with pytest.raises(TypeError, match="forgets_to_await is a plain function that returned"):
            await bus.emit("after_add_entity", added())
        with pytest.raises(
            TypeError, match="returned a coroutine on event 'after_add_entity'"
        ) as info:
            await bus.collect("after_add_entity", added())
        name = f"{forgets_to_await.__module__}.{forgets_to_await.__qualname__}"
        assert info.value.__notes__ == [f"raised by hook {name} on event 'after_add_entity'"]
        bus.hook("after_add_entity", select=where(bool))(lambda e: None)  # the checked shape
        with pytest.raises(TypeError, match="forgets_to_await"):
            await bus.emit("after_add_entity", added())
    assert ran == []


def test_returns_none_reads_every_return_of_a_plain_function() -> None:
    from hookbus._hooks import returns_none

    def bare(event: Any) -> None:
        pass

    def early(event: Any) -> None:
        if event:
            return
        print(event)

    def guarded(event: Any) -> None:
        try:
            print(event)
        except ValueError:
            return None
        finally:
            print(event)

    def returns_it(event: Any) -> Any:
        return event

    def or_none(event: Any) -> Any:
        return event or None  # a jump lands on the return with `event` on the stack

    def either(event: Any) -> Any:
        return None if event else event

    def generator(event: Any) -> Any:
        yield event

    async def coroutine(event: Any) -> None:
        pass

    class Method:
        def method(self, event: Any) -> None:
            pass

        def __call__(self, event: Any) -> None:
            pass

    proven = (bare, early, guarded, Method().method, lambda e: None)
    unproven = (returns_it, or_none, either, generator, coroutine, lambda e: print(e))
    others = (Method(), functools.partial(bare), print)  # not Python functions: not read
    assert [returns_none(fn) for fn in proven] == [True] * len(proven)
    assert [returns_none(fn) for fn in (*unproven, *others)] == [False] * 9


async def test_a_hook_that_may_return_a_coroutine_is_checked_whatever_its_shape(
    bus: Bus,
) -> None:
    async def work(event: EntityEvent) -> None:
        pass

    def sometimes(event: EntityEvent) -> Any:
        return work(event) or None  # only one return path is `None`

    def quiet(event: EntityEvent) -> None:
        pass

    bus.register(quiet, "after_add_entity")
    bus.register(sometimes, "after_add_entity")
    assert [h.returns_none for h in bus.hooks_for("after_add_entity")] == [True, False]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match="sometimes is a plain function that returned"):
            await bus.emit("after_add_entity", added())


async def test_async_callables_behind_a_partial_are_awaited(bus: Bus) -> None:
    seen: list[tuple[str, int]] = []

    class Notify:
        async def __call__(self, channel: str, event: EntityEvent) -> None:
            seen.append((channel, event.eid))

    async def tagged(tag: str, event: EntityEvent) -> None:
        seen.append((tag, event.eid))

    bus.register(functools.partial(Notify(), "mail"), "after_add_entity")
    bus.register(functools.partial(tagged, "tag"), "after_add_entity")
    assert [info.is_async for info in bus.registered()] == [True, True]
    await bus.emit("after_add_entity", added(eid=3))
    assert seen == [("mail", 3), ("tag", 3)]


async def test_a_raising_selector_is_named_with_its_hook_and_event(bus: Bus) -> None:
    @bus.hook("after_add_entity", select=where(lambda e: e.edited["missing"]))
    async def picky(event: EntityEvent) -> None: ...

    with pytest.raises(KeyError) as info:
        await bus.emit("after_add_entity", added())
    assert info.value.__notes__ == [
        f"raised by the selector of hook {__name__}.test_a_raising_selector_is_named_with_its_"
        "hook_and_event.<locals>.picky on event 'after_add_entity'"
    ]


async def test_an_unhashable_key_fails_with_a_clear_error(bus: Bus) -> None:
    class Batch(msgspec.Struct):
        key: Any

    bus.declare("batch", Batch)
    bus.hook("batch")(lambda e: None)
    with pytest.raises(TypeError, match=r"event 'batch': the key .* is unhashable"):
        await bus.emit("batch", Batch([1, 2]))


class _Counting(hookbus.Selector):
    """A user's selector that names its key; counts how often the index asks it."""

    asked = 0

    def __init__(self, key: int) -> None:
        self.key = key

    def specialize(self, spec: Any, key: Any) -> bool:
        _Counting.asked += 1
        return key == self.key

    def keys(self, spec: Any) -> frozenset[Any]:
        return frozenset({self.key})


async def test_fresh_keys_never_scan_the_hooks_however_many_keys(bus: Bus) -> None:
    class Ping(msgspec.Struct):
        key: int

    bus.declare("ping", Ping)
    seen: list[int] = []
    for i in range(50):
        bus.hook("ping", select=_Counting(i * 1000))(lambda e: seen.append(e.key))
    bus.hook("ping", select=~hookbus.match_key(7))(lambda e: seen.append(-1))
    _Counting.asked = 0
    for key in range(6000):  # past the bound of keys a table holds
        await bus.emit("ping", Ping(key))
    assert seen.count(-1) == 5999
    assert [k for k in seen if k >= 0] == [k for k in range(6000) if k % 1000 == 0 and k < 50000]
    assert _Counting.asked < 3000  # 6,000 keys x 50 hooks before: one scan per fresh key


async def test_a_selector_that_cannot_name_its_keys_is_asked_per_dispatch(bus: Bus) -> None:
    class Even(hookbus.Selector):
        def specialize(self, spec: Any, key: Any) -> bool:
            return isinstance(key, int) and key % 2 == 0

    class Ping(msgspec.Struct):
        key: int

    bus.declare("ping", Ping)
    seen: list[int] = []
    bus.hook("ping", select=Even())(lambda e: seen.append(e.key))
    for key in range(3000):
        await bus.emit("ping", Ping(key))
    assert seen == list(range(0, 3000, 2))


async def test_an_event_keyed_by_another_field_than_key_past_the_bound(bus: Bus) -> None:
    class Order(msgspec.Struct):
        customer: int

    bus.declare("order_placed", Order, key="customer")
    seen: list[int] = []
    bus.hook("order_placed", select=hookbus.match_key(2500))(lambda e: seen.append(e.customer))
    bus.hook("order_placed")(lambda e: seen.append(-1))
    for customer in range(3000):  # resolved through the declared field at every dispatch
        await bus.emit("order_placed", Order(customer))
    assert seen.count(-1) == 3000
    assert [c for c in seen if c >= 0] == [2500]


async def test_payloads_without_a_key_attribute_are_keyed_by_their_declared_field(
    bus: Bus,
) -> None:
    class Order(msgspec.Struct):
        sku: str

    class Tick(msgspec.Struct):
        n: int

    class SubTick(Tick):
        pass

    before = dict(vars(Order)), dict(vars(Tick))
    bus.declare("order_placed", Order, key="sku")
    bus.declare("tick", Tick)
    seen: list[object] = []
    bus.hook("order_placed", select=hookbus.match_key("a"))(lambda e: seen.append(e.sku))
    bus.hook("tick")(lambda e: seen.append(e.n))
    await bus.emit("order_placed", Order("a"))
    await bus.emit("order_placed", Order("b"))
    await bus.emit("tick", Tick(0))
    for _ in range(3):
        await bus.emit("order_placed", Order("a"))
        await bus.emit("order_placed", Order("b"))
        await bus.emit("tick", Tick(1))
    await bus.emit("tick", SubTick(2))  # a subclass: through the checks, which accept it
    with pytest.raises(TypeError, match=r"carries \S*Tick payloads"):
        await bus.emit("tick", Order("a"))
    assert seen == ["a", 0, "a", 1, "a", 1, "a", 1, 2]
    assert (dict(vars(Order)), dict(vars(Tick))) == before


class _Tick(msgspec.Struct):
    """An application payload with no ``key`` attribute: dispatched through its own lane."""

    n: int


async def test_registering_or_unregistering_resets_the_entries_of_a_key_less_event(
    bus: Bus,
) -> None:
    bus.declare("tick", _Tick)
    seen: list[str] = []
    bus.hook("tick")(lambda e: seen.append("first"))
    await bus.emit("tick", _Tick(0))
    await bus.emit("tick", _Tick(0))  # the entry is now the one the lane answers
    late = bus.register(lambda e: seen.append("late"), "tick")
    await bus.emit("tick", _Tick(1))
    bus.unregister(late)
    await bus.emit("tick", _Tick(2))
    assert seen == ["first", "first", "first", "late", "first"]


async def test_registering_or_unregistering_resets_the_entries_of_an_event_keyed_by_a_field(
    bus: Bus,
) -> None:
    class Order(msgspec.Struct):
        sku: str

    bus.declare("order_placed", Order, key="sku")
    seen: list[str] = []
    await bus.emit("order_placed", Order("a"))  # a miss, cached
    await bus.emit("order_placed", Order("a"))
    hook = bus.register(lambda e: seen.append(e.sku), "order_placed", select=hookbus.match_key("x"))
    await bus.emit("order_placed", Order("a"))
    await bus.emit("order_placed", Order("x"))
    bus.unregister(hook)
    await bus.emit("order_placed", Order("x"))
    assert seen == ["x"]


async def test_the_note_names_the_hook_that_raised_whatever_its_position_and_kind(
    bus: Bus,
) -> None:
    failing: list[str] = []
    ran: list[str] = []

    def maybe(name: str) -> None:
        ran.append(name)
        if failing == [name]:
            raise LookupError(name)

    async def awaited(event: EntityEvent) -> None:
        maybe("awaited")

    def called(event: EntityEvent) -> None:
        maybe("called")

    def checked(event: EntityEvent) -> Any:
        maybe("checked")
        return event.eid if event.eid < 0 else None  # may return something: checked

    async def selected(event: EntityEvent) -> None:
        maybe("selected")

    def selector(event: EntityEvent) -> bool:
        maybe("selector")
        return True

    async def last(event: EntityEvent) -> None:
        maybe("last")

    bus.register(awaited, "after_add_entity")
    bus.register(called, "after_add_entity")
    bus.register(checked, "after_add_entity")
    bus.register(selected, "after_add_entity", select=where(selector))
    bus.register(last, "after_add_entity")
    names = ["awaited", "called", "checked", "selector", "selected", "last"]
    for name in names:
        for dispatch in (bus.emit, bus.collect):
            failing[:] = [name]
            ran.clear()
            with pytest.raises(LookupError) as info:
                await dispatch("after_add_entity", added())
            what = "the selector of hook" if name == "selector" else "hook"
            hook = "selected" if name == "selector" else name
            assert info.value.__notes__ == [
                f"raised by {what} {__name__}.test_the_note_names_the_hook_that_raised_whatever"
                f"_its_position_and_kind.<locals>.{hook} on event 'after_add_entity'"
            ]
            assert ran == names[: names.index(name) + 1]  # the later hooks never ran
    failing.clear()
    ran.clear()
    assert await bus.emit("after_add_entity", added()) is None
    assert await bus.collect("after_add_entity", added()) == [None] * 5
    assert ran == names * 2


async def test_break_stops_the_hooks_at_every_position(bus: Bus) -> None:
    ran: list[int] = []

    def hook(position: int, is_async: bool) -> Any:
        def run(event: EntityEvent) -> None:
            ran.append(position)
            if event.eid == position:
                raise Break(position)

        async def run_async(event: EntityEvent) -> None:
            run(event)

        return run_async if is_async else run

    for position in range(6):
        bus.register(hook(position, position % 2 == 0), "after_add_entity")
    for position in range(6):
        ran.clear()
        broken = await bus.emit("after_add_entity", added(eid=position))
        assert broken is not None and broken.value == position
        assert ran == list(range(position + 1))
        results = await bus.collect("after_add_entity", added(eid=position))
        assert results == [None] * position
        assert results.broken is not None and results.broken.value == position


async def test_emit_returns_the_dispatch_coroutine_which_runs_only_when_awaited(
    bus: Bus,
) -> None:
    seen: list[int] = []
    bus.hook("after_add_entity")(lambda e: seen.append(e.eid))
    dispatch = bus.emit("after_add_entity", added(eid=1))
    assert asyncio.iscoroutine(dispatch)
    assert seen == []
    assert await dispatch is None
    assert seen == [1]
    miss = bus.emit("after_update_entity", EntityEvent("after_update_entity", "P", 2))
    assert asyncio.iscoroutine(miss)
    assert await miss is None
    with pytest.raises(UnknownEventError):
        bus.emit("after_add_entty", added())  # refused at the call, before any coroutine
    if sys.version_info >= (3, 12):  # frameworks that test it before awaiting see the truth
        assert inspect.iscoroutinefunction(bus.emit)


async def test_a_hook_whose_name_reads_as_code_is_only_ever_a_name(bus: Bus) -> None:
    ran: list[str] = []

    class Sly:
        __qualname__ = 'x(payload)\n    raise SystemExit("injected")  #'
        __module__ = '"); import os  #'

        def __call__(self, event: EntityEvent) -> None:
            ran.append("sly")
            if event.eid == 2:
                raise LookupError("named")

    bus.register(Sly(), "after_add_entity")
    assert await bus.emit("after_add_entity", added(eid=1)) is None
    with pytest.raises(LookupError) as info:
        await bus.emit("after_add_entity", added(eid=2))
    assert ran == ["sly", "sly"]
    assert info.value.__notes__ == [
        f"raised by hook {Sly.__module__}.{Sly.__qualname__} on event 'after_add_entity'"
    ]


class _Shipment(msgspec.Struct):
    """An application payload with a field named ``key`` that is not its key."""

    key: str
    customer: str


async def test_the_declared_key_field_keys_the_event_not_a_field_named_key() -> None:
    bus = Bus()
    bus.declare("shipped", _Shipment, key="customer")
    seen: list[str] = []
    bus.hook("shipped", select=hookbus.match_key("acme"))(lambda s: seen.append(s.key))
    for _ in range(2):  # entries built, then found
        for key, customer in (("acme", "globex"), ("x", "acme")):
            await bus.emit("shipped", _Shipment(key, customer))
            await bus.collect("shipped", _Shipment(key, customer))
    assert seen == ["x"] * 4


def test_an_unknown_event_is_named_with_the_three_closest(bus: Bus) -> None:
    with pytest.raises(UnknownEventError) as info:
        bus.hooks_for("after_add_entty")
    assert info.value.name == "after_add_entty"
    assert info.value.suggestions == (
        "after_add_entity",
        "after_update_entity",
        "after_delete_entity",
    )
    assert str(info.value).startswith("unknown event 'after_add_entty'; did you mean")
    with pytest.raises(UnknownEventError) as info:  # not a str: unknown, even unhashable
        bus.hooks_for(["after_add_entity"])  # type: ignore[arg-type]
    assert info.value.name == "['after_add_entity']"


async def test_ever_new_keys_keep_memory_bounded() -> None:
    bus = Bus()
    bus.hook("after_add_entity", select=is_instance("Person"))(lambda e: None)
    bus.hook("after_add_entity")(lambda e: None)  # every other key runs this one
    payloads = [added(f"T{i}") for i in range(6000)]
    for payload in payloads[:2000]:  # past the keys a table holds one by one
        await bus.emit("after_add_entity", payload)
    tracemalloc.start()  # what was allocated before is not traced
    try:
        before = tracemalloc.get_traced_memory()[0]
        for payload in payloads[2000:]:
            await bus.emit("after_add_entity", payload)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 50_000, f"{grown} bytes kept by 4,000 more keys"


class _Renamed(hookbus.Hook):
    events = ("after_add_entity",)
    select = is_instance("Person")
    category = "integrity"
    priority = 3

    def __call__(self, event: EntityEvent) -> None: ...


def test_the_arguments_of_register_override_a_hook_class_and_the_class_is_returned() -> None:
    bus = Bus()
    assert bus.register(_Renamed) is _Renamed
    overridden = bus.register(
        _Renamed(),
        "after_update_entity",
        select=is_instance("Company"),
        category="mail",
        priority=-1,
    )
    assert (overridden.events, overridden.category, overridden.priority) == (
        ("after_update_entity",),
        "mail",
        -1,
    )
    assert repr(overridden.select) == "is_instance('Company')"
    plain = bus.register(lambda e: None, "after_add_entity")
    assert (plain.category, plain.priority) == ("default", 0)
    orders = [info.order for info in bus.registered()]
    assert orders == sorted(set(orders))  # registration order, one number per hook
    with pytest.raises(RegistrationError, match="names no event"):
        bus.register(lambda e: None)


def test_declare_returns_the_event_and_events_lists_it_last() -> None:
    bus = Bus()

    class Tick(msgspec.Struct):
        n: int

    spec = bus.declare("tick", Tick)
    assert (spec.name, spec.payload, spec.key) == ("tick", Tick, None)
    assert bus.events()[-1] is spec and len(bus.events()) == len(set(bus.events()))
    assert bus.hooks_for("tick") == ()  # declared, no hook yet
    # A hookbus payload type keeps its key field under another event name.
    assert bus.declare("person_seen", EntityEvent).key == "etype"
    assert bus.declare("person_seen_too", EntityEvent, key="etype").key == "etype"
    with pytest.raises(RegistrationError, match="'person_eid': EntityEvent is keyed by 'etype'"):
        bus.declare("person_eid", EntityEvent, key="eid")


class _Keyed(msgspec.Struct):
    key: int


class _Unhashable:
    """A callable hook that compares by value, so has no hash."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Unhashable) and other.name == self.name

    __hash__ = None  # type: ignore[assignment]

    def __call__(self, event: EntityEvent) -> None: ...


def test_unhashable_callables_register_and_unregister_one_by_one() -> None:
    bus = Bus()
    first, second = _Unhashable("a"), _Unhashable("b")
    bus.register(first, "after_add_entity")
    bus.register(second, "after_add_entity")
    assert [info.fn for info in bus.registered()] == [first, second]
    bus.unregister(second)
    assert [info.fn for info in bus.registered()] == [first]


def test_listing_shows_each_hooks_static_keys_and_whether_a_check_is_left() -> None:
    bus = Bus()

    def big(event: EntityEvent) -> bool:
        return event.eid > 10

    both = bus.register(lambda e: None, "after_add_entity", "after_update_entity")
    few = bus.register(
        lambda e: None, "after_add_entity", select=is_instance("Person", "Company"), priority=-1
    )
    checked = bus.register(
        lambda e: None, "after_add_entity", select=is_instance("Person") & where(big)
    )
    anywhere = bus.register(lambda e: None, "after_add_relation", select=where(big))
    named = bus.register(lambda e: None, "after_add_relation", select=match_rtype("knows", "boss"))
    bus.declare("ping", _Keyed)
    numbered = bus.register(lambda e: None, "ping", select=hookbus.match_key(10, 2))
    assert bus.listing() == [
        ("after_add_entity", "Company,Person", few),
        ("after_add_entity", "*", both),
        ("after_add_entity", "Person (where)", checked),
        ("after_update_entity", "*", both),
        ("after_add_relation", "* (where)", anywhere),
        ("after_add_relation", "boss,knows", named),
        ("ping", "10,2", numbered),
    ]


class _CheckedWhereBitSet(hookbus.Selector):
    """Hook ``bit``'s selector on ``_Keyed`` events: names keys 0 to 1023 and leaves a
    check (always true) for the keys with that bit set, none for the others."""

    def __init__(self, bit: int) -> None:
        self.bit = bit

    def specialize(self, spec: hookbus.EventSpec, key: Hashable) -> bool | Callable[[Any], bool]:
        return (lambda payload: True) if isinstance(key, int) and key >> self.bit & 1 else True

    def keys(self, spec: hookbus.EventSpec) -> frozenset[Hashable] | None:
        return frozenset(range(1024))


async def test_more_entry_shapes_than_the_compiled_ones_kept_all_dispatch() -> None:
    bus = Bus()
    bus.declare("keyed", _Keyed)
    ran: list[int] = []
    for bit in range(10):
        bus.register(lambda e: ran.append(e.key), "keyed", select=_CheckedWhereBitSet(bit))
    for key in range(600):  # 600 shapes: which of the 10 hooks have a check
        await bus.emit("keyed", _Keyed(key))
    assert ran == [key for key in range(600) for _ in range(10)]
