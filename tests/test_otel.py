"""hookbus_otel: spans and histograms recorded with the SDK's in-memory exporter and reader."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import hookbus_otel
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import hookbus
from hookbus import Break, Bus, EntityEvent, Operation, ServerEvent
from hookbus.instrumentation import EntryFactory, default_entry, observe_scopes, use_entries


class Telemetry:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def instrument(self, bus: Bus, **options: Any) -> None:
        hookbus_otel.instrument(
            bus,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
            **options,
        )

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> ReadableSpan:
        (span,) = [s for s in self.spans() if s.name == name]
        return span

    def points(self, metric: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        found = []
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                assert scope.scope.name == "hookbus"
                for m in scope.metrics:
                    if m.name == metric:
                        assert m.unit == "s"
                        found.extend(m.data.data_points)
        return found


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    instrumented: list[Bus] = []
    telemetry = Telemetry()
    original = telemetry.instrument

    def instrument(bus: Bus, **options: Any) -> None:
        original(bus, **options)
        instrumented.append(bus)

    telemetry.instrument = instrument  # type: ignore[method-assign]
    yield telemetry
    for bus in instrumented:
        if hookbus_otel.is_instrumented(bus):
            hookbus_otel.uninstrument(bus)
    assert observe_scopes(None) is None  # every observer removed


def factory_of(bus: Bus) -> EntryFactory:
    """The entry factory ``bus`` builds with (read by swapping it out and back)."""
    factory = use_entries(bus, default_entry)
    use_entries(bus, factory)
    return factory


class Remember(Operation):
    async def postcommit(self) -> None:
        pass


class Refuse(Operation):
    async def precommit(self) -> None:
        raise ValueError("refused")


def person(eid: int = 1, event: str = "before_add_entity") -> EntityEvent:
    return EntityEvent(event, "Person", eid)


# -- scopes and phases (on by default) -----------------------------------------------------


async def test_a_committed_scope_has_its_span_and_one_per_phase(telemetry: Telemetry) -> None:
    telemetry.instrument(Bus())
    async with hookbus.transaction() as tx:
        tx.add(Remember())
    scope = telemetry.named("hookbus.transaction")
    assert scope.instrumentation_scope is not None
    assert scope.instrumentation_scope.name == "hookbus"
    assert scope.instrumentation_scope.version == hookbus_otel._settings.library_version()
    assert scope.attributes is not None
    assert scope.attributes["hookbus.transaction.outcome"] == "committed"
    assert scope.attributes["hookbus.operations"] == 1
    assert scope.status.status_code is StatusCode.UNSET
    phases = [s for s in telemetry.spans() if s is not scope]
    assert [s.name for s in phases] == ["hookbus.precommit", "hookbus.commit", "hookbus.postcommit"]
    for span in phases:
        assert span.parent is not None and span.parent.span_id == scope.context.span_id
        assert span.start_time is not None and scope.start_time is not None
        assert scope.start_time <= span.start_time
    (commit,) = telemetry.points("hookbus.commit.duration")
    assert commit.count == 1 and commit.attributes == {"hookbus.transaction.outcome": "committed"}
    assert telemetry.points("hookbus.transaction.duration")[0].count == 1


async def test_a_failed_precommit_shows_the_rollback_phases_and_the_error(
    telemetry: Telemetry,
) -> None:
    telemetry.instrument(Bus())
    with pytest.raises(ValueError, match="refused"):
        async with hookbus.transaction() as tx:
            tx.add(Refuse())
    names = [s.name for s in telemetry.spans()]
    assert names == [
        "hookbus.precommit",
        "hookbus.revertprecommit",
        "hookbus.rollback",
        "hookbus.transaction",
    ]
    assert telemetry.named("hookbus.precommit").status.status_code is StatusCode.ERROR
    scope = telemetry.named("hookbus.transaction")
    assert scope.status.status_code is StatusCode.ERROR
    assert scope.attributes is not None
    assert scope.attributes["hookbus.transaction.outcome"] == "rolled_back"
    assert [e.name for e in scope.events] == ["exception"]
    assert not telemetry.points("hookbus.commit.duration")


async def test_a_deliberate_rollback_is_no_error(telemetry: Telemetry) -> None:
    telemetry.instrument(Bus())
    async with hookbus.transaction() as tx:
        await tx.rollback()
    scope = telemetry.named("hookbus.transaction")
    assert scope.status.status_code is StatusCode.UNSET
    assert [s.name for s in telemetry.spans()][:2] == [
        "hookbus.revertprecommit",
        "hookbus.rollback",
    ]


async def test_dispatches_make_no_span_by_default(telemetry: Telemetry) -> None:
    bus = Bus()
    ran = []
    bus.hook("before_add_entity")(ran.append)
    telemetry.instrument(bus)
    assert factory_of(bus) is default_entry  # the default entries, untouched
    async with hookbus.transaction():
        await bus.emit("before_add_entity", person())
    assert ran and [s.name for s in telemetry.spans()][-1] == "hookbus.transaction"
    assert not any(s.name.startswith("hookbus.emit") for s in telemetry.spans())
    assert not telemetry.points("hookbus.hook.duration")


# -- dispatch and hook spans (opt-in) ------------------------------------------------------


async def test_all_dispatches_and_hooks_nest_in_the_scope(telemetry: Telemetry) -> None:
    bus = Bus()

    @bus.hook("before_add_entity")
    async def outer(event: EntityEvent) -> None:
        await bus.emit("after_add_entity", person(event.eid, "after_add_entity"))

    @bus.hook("after_add_entity")
    def inner(event: EntityEvent) -> None:
        pass

    telemetry.instrument(bus, dispatch_spans="all", hook_spans=True)
    async with hookbus.transaction():
        await bus.emit("before_add_entity", person())
    by_name = {s.name: s for s in telemetry.spans()}
    scope = by_name["hookbus.transaction"]
    emit = by_name["hookbus.emit before_add_entity"]
    hook = by_name[f"hookbus.hook {outer.__module__}.{outer.__qualname__}"]
    nested = by_name["hookbus.emit after_add_entity"]
    inner_span = by_name[f"hookbus.hook {inner.__module__}.{inner.__qualname__}"]

    def parent(span: ReadableSpan) -> int:
        assert span.parent is not None
        return span.parent.span_id

    assert parent(emit) == scope.context.span_id
    assert parent(hook) == emit.context.span_id
    assert parent(nested) == hook.context.span_id
    assert parent(inner_span) == nested.context.span_id
    assert emit.attributes == {"hookbus.event": "before_add_entity"}
    assert inner_span.attributes is not None
    assert inner_span.attributes["hookbus.hook.name"].endswith("inner")
    hooks = {p.attributes["hookbus.hook.name"].rsplit(".", 1)[-1] for p in
             telemetry.points("hookbus.hook.duration")}  # fmt: skip
    assert hooks == {"outer", "inner"}
    assert len(telemetry.points("hookbus.dispatch.duration")) == 2


async def test_an_instrumented_entry_keeps_the_rules_of_dispatch(telemetry: Telemetry) -> None:
    bus = Bus()
    order = []

    @bus.hook("before_add_entity", priority=1)
    def first(event: EntityEvent) -> str:
        order.append("first")
        return "one"

    @bus.hook("before_add_entity", priority=2)
    async def stop(event: EntityEvent) -> None:
        raise Break("enough")

    @bus.hook("before_add_entity", priority=3)
    async def never(event: EntityEvent) -> None:
        order.append("never")

    @bus.hook("after_add_entity")
    async def fails(event: EntityEvent) -> None:
        raise KeyError("boom")

    telemetry.instrument(bus, dispatch_spans="all", hook_spans=True)
    broken = await bus.emit("before_add_entity", person())
    assert isinstance(broken, Break) and order == ["first"]
    results = await bus.collect("before_add_entity", person())
    assert list(results) == ["one"] and isinstance(results.broken, Break)
    with pytest.raises(KeyError) as caught:
        await bus.emit("after_add_entity", person(event="after_add_entity"))
    assert "raised by hook" in caught.value.__notes__[0]
    with pytest.raises(ValueError, match="whose event is"):
        await bus.emit("after_add_entity", person())
    failed = telemetry.named(f"hookbus.hook {fails.__module__}.{fails.__qualname__}")
    assert failed.status.status_code is StatusCode.ERROR
    assert telemetry.named("hookbus.emit after_add_entity").status.status_code is StatusCode.ERROR
    emits = [s for s in telemetry.spans() if s.name == "hookbus.emit before_add_entity"]
    assert [s.attributes for s in emits] == [
        {"hookbus.event": "before_add_entity", "hookbus.broken": True}
    ] * 2


async def test_slow_mode_records_only_the_hooks_over_the_threshold(
    telemetry: Telemetry,
) -> None:
    bus = Bus()
    released = asyncio.Event()

    @bus.hook("server_startup")
    def quick(event: ServerEvent) -> None:
        pass

    @bus.hook("server_startup")
    async def slow(event: ServerEvent) -> None:
        await released.wait()

    @bus.hook("server_shutdown")
    def alone(event: ServerEvent) -> None:
        pass

    telemetry.instrument(bus, dispatch_spans="slow", slow_threshold=0.05, hook_spans=True)
    await bus.emit("server_shutdown", ServerEvent("server_shutdown"))
    assert telemetry.spans() == []  # a quick dispatch makes no span
    asyncio.get_running_loop().call_later(0.2, released.set)
    await bus.emit("server_startup", ServerEvent("server_startup"))
    spans = telemetry.spans()
    assert [s.name for s in spans] == [
        f"hookbus.hook {slow.__module__}.{slow.__qualname__}",
        "hookbus.emit server_startup",
    ]
    hook, emit = spans
    assert hook.parent is not None and hook.parent.span_id == emit.context.span_id
    assert hook.end_time is not None and hook.start_time is not None
    assert hook.end_time - hook.start_time >= 0.05e9
    assert len(telemetry.points("hookbus.hook.duration")) == 3  # every hook is measured


async def nothing(event: EntityEvent) -> None:
    pass


# -- off: nothing recorded, the entries of hookbus -----------------------------------------


async def test_off_and_after_uninstrument_the_entries_are_hookbus_own(
    telemetry: Telemetry,
) -> None:
    def build() -> Bus:
        bus = Bus()
        bus.hook("before_add_entity")(lambda event: None)
        bus.hook("after_add_entity")(nothing)
        bus.hook("before_update_entity", select=hookbus.where(bool))(lambda event: None)
        return bus

    async def run(bus: Bus) -> None:
        for event in ("before_add_entity", "after_add_entity", "before_update_entity"):
            await bus.emit(event, person(event=event))

    bus = build()
    await run(bus)
    assert factory_of(bus) is default_entry
    telemetry.instrument(bus, dispatch_spans="all", hook_spans=True)
    assert factory_of(bus) is not default_entry
    await run(bus)
    assert telemetry.spans()
    hookbus_otel.uninstrument(bus)
    assert observe_scopes(None) is None
    assert factory_of(bus) is default_entry
    telemetry.exporter.clear()
    await run(bus)
    async with hookbus.transaction() as tx:
        tx.add(Remember())
    assert telemetry.spans() == []


async def test_a_scope_opened_before_instrument_is_left_alone(telemetry: Telemetry) -> None:
    async with hookbus.transaction():
        telemetry.instrument(Bus())
    assert telemetry.spans() == []


def test_mistakes_are_refused_at_once(telemetry: Telemetry) -> None:
    bus = Bus()
    with pytest.raises(ValueError, match="dispatch_spans is one of"):
        telemetry.instrument(bus, dispatch_spans="some")
    with pytest.raises(ValueError, match="hook_spans=True records hooks inside"):
        telemetry.instrument(bus, hook_spans=True)
    with pytest.raises(ValueError, match=">= 0"):
        telemetry.instrument(bus, slow_threshold=-1)
    with pytest.raises(TypeError, match=r"takes a hookbus\.Bus"):
        hookbus_otel.instrument(object())  # type: ignore[arg-type]
    with pytest.raises(LookupError, match="not instrumented"):
        hookbus_otel.uninstrument(bus)
    telemetry.instrument(bus)
    with pytest.raises(RuntimeError, match="already instrumented"):
        telemetry.instrument(bus)


# -- on the real PostgreSQL ----------------------------------------------------------------


async def test_on_postgresql_a_commit_refused_by_a_deferred_constraint(
    telemetry: Telemetry, pool: Any
) -> None:
    import asyncpg
    import hookbus_asyncpg

    await pool.execute(
        "CREATE TABLE IF NOT EXISTS otel_parent (id int PRIMARY KEY);"
        "CREATE TABLE IF NOT EXISTS otel_child (id int PRIMARY KEY, parent int"
        " REFERENCES otel_parent (id) DEFERRABLE INITIALLY DEFERRED);"
        "TRUNCATE otel_child, otel_parent"
    )
    telemetry.instrument(Bus())
    async with hookbus_asyncpg.transaction(pool) as tx:
        await tx.connection.execute("INSERT INTO otel_parent VALUES (1)")
    committed = telemetry.named("hookbus.transaction")
    assert committed.attributes is not None
    assert committed.attributes["hookbus.transaction.outcome"] == "committed"
    assert committed.attributes["hookbus.backend"] == "AsyncpgBackend"
    telemetry.exporter.clear()
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        async with hookbus_asyncpg.transaction(pool) as tx:
            await tx.connection.execute("INSERT INTO otel_child VALUES (1, 99)")
    assert [s.name for s in telemetry.spans()] == [
        "hookbus.precommit",
        "hookbus.commit",
        "hookbus.revertprecommit",
        "hookbus.rollback",
        "hookbus.transaction",
    ]
    assert telemetry.named("hookbus.commit").status.status_code is StatusCode.ERROR
    scope = telemetry.named("hookbus.transaction")
    assert scope.status.status_code is StatusCode.ERROR
    assert scope.attributes is not None
    assert scope.attributes["hookbus.transaction.outcome"] == "rolled_back"
    outcomes = {p.attributes["hookbus.transaction.outcome"]: p.count
                for p in telemetry.points("hookbus.commit.duration")}  # fmt: skip
    assert outcomes == {"committed": 1, "rolled_back": 1}
    assert await pool.fetchval("SELECT count(*) FROM otel_child") == 0


async def test_trace_headers_carry_the_scope_trace(telemetry: Telemetry) -> None:
    assert hookbus_otel.trace_headers() == {}
    telemetry.instrument(Bus())
    async with hookbus.transaction():
        headers = hookbus_otel.trace_headers()
    scope = telemetry.named("hookbus.transaction")
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    assert int(trace_id, 16) == scope.context.trace_id
    assert int(span_id, 16) == scope.context.span_id
