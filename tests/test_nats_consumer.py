"""The NATS consumer on a real JetStream and PostgreSQL: each event applied once, or dead-lettered.

Every test makes its own stream, dead-letter stream, consumer name and projection table.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import secrets
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import hookbus_asyncpg
import msgspec
import pytest
import pytest_asyncio
from _nats_consumer import (  # noqa: F401
    Stream,
    nats_url_fixture,
    pending,
    publish,
    settled,
    stream_fixture,
)
from _nats_consumer_fleet import hookbus_command, worker_env
from hookbus_asyncpg.testing import create_database, drop_database
from hookbus_nats import (
    Consumer,
    ConsumerError,
    ConsumerState,
    DeadReason,
    create_inbox,
    inbox_plugin,
    list_dead_letters,
    record_applied,
    replay_dead_letters,
)

from hookbus import Bus, Edited, EntityEvent, PluginSet, current_transaction, is_instance


class OrderPlaced(msgspec.Struct, frozen=True):
    """Version 1 of the event, as an old consumer declares it."""

    order_id: int
    amount: int


class OrderPlacedV2(msgspec.Struct, frozen=True):
    """Version 2: an optional note (compatible)."""

    order_id: int
    amount: int
    note: str | None = None


class OrderPlacedV3(msgspec.Struct, frozen=True):
    """Version 3: the amount became a decimal string (incompatible with version 1)."""

    order_id: int
    amount: str


@pytest_asyncio.fixture
async def projection(pool: asyncpg.Pool) -> AsyncIterator[str]:
    """A table of the test's own: how many times each order was applied."""
    table = f"applied_{secrets.token_hex(4)}"
    await create_inbox(pool)
    await pool.execute(f"CREATE TABLE {table} (order_id int PRIMARY KEY, n int NOT NULL)")
    yield table
    await pool.execute(f"DROP TABLE {table}")


def order_bus(
    table: str, payload: type = OrderPlaced, *, fail: Callable[[Any], bool] | None = None
) -> Bus:
    """A consumer's bus: ``order_placed`` counted into ``table``; ``fail(event)`` raises."""
    bus = Bus()
    bus.declare("order_placed", payload)

    @bus.hook("order_placed")
    async def count(event: Any) -> None:
        if fail is not None and fail(event):
            raise RuntimeError(f"order {event.order_id} refused")
        await current_transaction().connection.execute(  # type: ignore[attr-defined]
            f"INSERT INTO {table} VALUES ($1, 1) "
            f"ON CONFLICT (order_id) DO UPDATE SET n = {table}.n + 1",
            event.order_id,
        )

    return bus


async def counts(pool: asyncpg.Pool, table: str) -> dict[int, int]:
    return {r[0]: r[1] for r in await pool.fetch(f"SELECT order_id, n FROM {table}")}


def consumer(
    bus: Bus, pool: asyncpg.Pool, stream: Stream, name: str | None = None, **options: Any
) -> Consumer:
    options.setdefault("fetch_timeout", 0.5)
    return Consumer(
        bus,
        pool,
        stream.nc,
        name=name or f"c{secrets.token_hex(4)}",
        stream=stream.name,
        dead_letter_stream=stream.dead_stream,
        dead_letter_prefix=stream.dead_prefix,
        **options,
    )


async def drain(c: Consumer, js: Any, stream: Stream, *, polls: int = 50) -> None:
    """Poll until the consumer has nothing pending nor unacknowledged."""
    if c.state is ConsumerState.NEW:
        await c.start()
    for _ in range(polls):
        await c.poll()
        if await pending(js, stream.name, c.name) == (0, 0):
            return
    raise AssertionError(f"consumer {c.name} still has {await pending(js, stream.name, c.name)}")


async def test_a_batch_applies_each_event_once_and_acknowledges_after_commit(
    pool: asyncpg.Pool, stream: Stream, projection: str
) -> None:
    for order in range(1, 21):
        await publish(stream.js, stream.subject(order), "order_placed", OrderPlaced(order, 10))
    c = consumer(order_bus(projection), pool, stream)
    await c.start()
    assert await c.poll() == 20
    assert await counts(pool, projection) == {order: 1 for order in range(1, 21)}
    assert await settled(stream.js, stream.name, c.name) == (0, 0)
    stats = c.statistics()
    assert (stats.applied, stats.batches, stats.dead_lettered) == (20, 1, 0)
    rows = await pool.fetchval("SELECT count(*) FROM hookbus_inbox WHERE consumer = $1", c.name)
    assert rows == 20


async def test_a_redelivery_after_the_ack_deadline_applies_its_effect_once(
    pool: asyncpg.Pool, stream: Stream, projection: str
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    calls = 0

    def slow_first(event: Any) -> bool:
        nonlocal calls
        calls += 1
        return False

    bus = order_bus(projection, fail=slow_first)

    @bus.hook("order_placed", priority=-1)
    async def hold_the_first_delivery(event: Any) -> None:
        if not started.is_set():
            started.set()
            await release.wait()  # past ack_wait: the server redelivers to the other process

    name = f"c{secrets.token_hex(4)}"
    first = consumer(bus, pool, stream, name, ack_wait=1.0, heartbeat=False)
    second = consumer(bus, pool, stream, name, ack_wait=1.0, heartbeat=False, fetch_timeout=5)
    await first.start()
    await second.start()
    await publish(stream.js, stream.subject(1), "order_placed", OrderPlaced(1, 10))
    held = asyncio.create_task(first.poll())
    await started.wait()
    redelivered = asyncio.create_task(second.poll())
    # The redelivery's inbox insert waits for the first transaction's row: release it then.
    await _until_a_backend_waits_on_a_lock(pool)
    release.set()
    await asyncio.gather(held, redelivered)
    assert await counts(pool, projection) == {1: 1}
    assert calls == 1
    assert (first.statistics().applied, second.statistics().duplicates) == (1, 1)
    assert second.statistics().redelivered == 1
    assert await settled(stream.js, stream.name, name) == (0, 0)


async def _until_a_backend_waits_on_a_lock(pool: asyncpg.Pool) -> None:
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'"
    )
    for _ in range(1000):  # PostgreSQL offers nothing to await
        if await pool.fetchval(query):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no redelivery ever waited for the first transaction")


async def test_malformed_and_undeclared_messages_are_dead_lettered_and_consuming_goes_on(
    pool: asyncpg.Pool, stream: Stream, projection: str
) -> None:
    js, subject = stream.js, stream.subject("x")
    await publish(js, subject, "order_placed", OrderPlaced(1, 10))
    await publish(js, subject, "order_placed", None, raw=b"{not json", msg_id="malformed")
    await publish(js, subject, "order_cancelled", OrderPlaced(2, 10), msg_id="undeclared")
    await publish(js, subject, "order_placed", OrderPlaced(3, 10), wire="2", msg_id="wire2")
    await publish(js, subject, "order_placed", OrderPlaced(4, 10))
    c = consumer(order_bus(projection), pool, stream)
    await drain(c, js, stream)
    assert await counts(pool, projection) == {1: 1, 4: 1}
    letters = [
        s.letter
        async for s in list_dead_letters(
            js, c.name, stream=stream.dead_stream, prefix=stream.dead_prefix
        )
    ]
    assert [(d.msg_id, d.reason) for d in letters] == [
        ("malformed", DeadReason.MALFORMED),
        ("undeclared", DeadReason.UNDECLARED_EVENT),
        ("wire2", DeadReason.UNKNOWN_WIRE),
    ]
    assert letters[0].data == b"{not json"
    assert "order_cancelled" in letters[1].detail
    assert c.statistics().dead_lettered == 3
    # still consuming
    await publish(js, subject, "order_placed", OrderPlaced(5, 10))
    await drain(c, js, stream)
    assert await counts(pool, projection) == {1: 1, 4: 1, 5: 1}


async def test_an_old_consumer_decodes_a_newer_event_with_an_extra_optional_field(
    pool: asyncpg.Pool, stream: Stream, projection: str
) -> None:
    seen: list[Any] = []
    bus = order_bus(projection)  # version 1 of the event
    bus.hook("order_placed")(seen.append)
    await publish(stream.js, stream.subject(1), "order_placed", OrderPlacedV2(1, 10, note="gift"))
    c = consumer(bus, pool, stream)
    await drain(c, stream.js, stream)
    assert await counts(pool, projection) == {1: 1}
    assert seen == [OrderPlaced(1, 10)]
    # an event the bus declares after the consumer was built is decoded all the same
    bus.declare("order_noted", OrderPlacedV2)
    bus.hook("order_noted")(lambda event: seen.append(event))
    await publish(stream.js, stream.subject(2), "order_noted", OrderPlacedV2(2, 5, note="n"))
    await drain(c, stream.js, stream)
    assert seen[1:] == [OrderPlacedV2(2, 5, note="n")]
    assert c.statistics().dead_lettered == 0


async def test_an_incompatible_event_is_dead_lettered_then_replayed_once_the_consumer_is_upgraded(
    pool: asyncpg.Pool, stream: Stream, projection: str
) -> None:
    js = stream.js
    where = {"stream": stream.dead_stream, "prefix": stream.dead_prefix}
    await publish(js, stream.subject(7), "order_placed", OrderPlacedV3(7, "12.50"), msg_id="o7")
    name = f"c{secrets.token_hex(4)}"
    old = consumer(order_bus(projection), pool, stream, name)
    await drain(old, js, stream)
    assert await counts(pool, projection) == {}
    [stored] = [s async for s in list_dead_letters(js, name, **where)]
    assert stored.letter.reason is DeadReason.INCOMPATIBLE
    assert "Expected `int`, got `str` - at `$.amount`" in stored.letter.detail

    upgraded = consumer(order_bus(projection, OrderPlacedV3), pool, stream, name)
    replayed = [r async for r in replay_dead_letters(js, name, **where)]
    assert [r.msg_id for r in replayed] == ["o7"]
    await drain(upgraded, js, stream)
    assert await counts(pool, projection) == {7: 1}
    assert [s async for s in list_dead_letters(js, name, **where)] == []
    # A second replay of the same message (say, a replay cut short and run again) is a no-op.
    letter = stored.letter
    from hookbus_nats._dead_letters import replay_headers

    await js.publish(
        letter.subject, letter.data, headers=replay_headers(stored) | {"Nats-Msg-Id": "again"}
    )
    await drain(upgraded, js, stream)
    assert await counts(pool, projection) == {7: 1}
    assert upgraded.statistics().duplicates == 1


async def test_a_batch_with_one_failing_message_applies_the_others_once(
    pool: asyncpg.Pool, stream: Stream, projection: str
) -> None:
    failures = {3: 2}  # order 3 fails in the batch, then alone: both on its first delivery

    def fail(event: Any) -> bool:
        if failures.get(event.order_id, 0) > 0:
            failures[event.order_id] -= 1
            return True
        return False

    for order in range(1, 6):
        await publish(stream.js, stream.subject(order), "order_placed", OrderPlaced(order, 10))
    c = consumer(order_bus(projection, fail=fail), pool, stream, backoff=(0.2,))
    await c.start()
    await c.poll()
    assert await counts(pool, projection) == {1: 1, 2: 1, 4: 1, 5: 1}
    stats = c.statistics()
    assert (stats.fallbacks, stats.retried, stats.applied, stats.batches) == (1, 1, 4, 0)
    await drain(c, stream.js, stream)  # the retry, after its delay
    assert await counts(pool, projection) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    assert c.statistics().redelivered == 1


async def test_a_message_failing_at_every_delivery_is_dead_lettered_after_max_deliver(
    pool: asyncpg.Pool, stream: Stream, projection: str
) -> None:
    bus = order_bus(projection, fail=lambda event: event.order_id == 2)
    for order in (1, 2):
        await publish(stream.js, stream.subject(order), "order_placed", OrderPlaced(order, 10))
    c = consumer(bus, pool, stream, backoff=(0.1,), max_deliver=3)
    await drain(c, stream.js, stream)
    assert await counts(pool, projection) == {1: 1}
    [stored] = [
        s
        async for s in list_dead_letters(
            stream.js, c.name, stream=stream.dead_stream, prefix=stream.dead_prefix
        )
    ]
    assert stored.letter.reason is DeadReason.HANDLER_FAILED
    assert stored.letter.deliveries == 3
    assert "order 2 refused" in stored.letter.detail
    assert (c.statistics().retried, c.statistics().dead_lettered) == (2, 1)


async def test_the_inbox_is_created_by_installing_its_plugin(dsn: str) -> None:
    async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool:
        await pool.execute("DROP TABLE IF EXISTS hookbus_inbox")
        manager = hookbus_asyncpg.PluginManager(pool, PluginSet(Bus(), [inbox_plugin()]))
        assert await manager.install() == ["hookbus_inbox"]
        columns = await pool.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'hookbus_inbox' ORDER BY ordinal_position"
        )
        assert [c[0] for c in columns] == ["consumer", "msg_id", "applied_at"]


def test_hookbus_publishes_none_of_its_own_plugins_as_entry_points() -> None:
    ours = [
        ep.value
        for ep in importlib.metadata.entry_points(group="hookbus.plugins")
        if ep.dist is not None and ep.dist.name == "hookbus"
    ]
    assert ours == []


async def test_hookbus_install_creates_the_outbox_and_inbox_only_when_the_app_lists_them(
    server: str,
) -> None:
    dsn = await create_database(server, "plugin_rule")
    try:
        env = worker_env(dsn)

        def install(app: str) -> None:
            done = subprocess.run(
                hookbus_command("install", f"_nats_consumer_plugins:{app}"),
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr

        async def made() -> tuple[list[str], list[str]]:
            conn = await asyncpg.connect(dsn)
            try:
                tables = await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE tablename IN "
                    "('hookbus_inbox', 'hookbus_outbox') ORDER BY 1"
                )
                plugins = await conn.fetch(
                    "SELECT name FROM hookbus_plugin WHERE name <> 'hookbus' ORDER BY 1"
                )
            finally:
                await conn.close()
            return [t[0] for t in tables], [p[0] for p in plugins]

        await asyncio.to_thread(install, "discovered")
        assert await made() == ([], [])
        await asyncio.to_thread(install, "listed")
        assert await made() == (
            ["hookbus_inbox", "hookbus_outbox"],
            ["hookbus_inbox", "hookbus_outbox"],
        )
    finally:
        await drop_database(server, dsn)


async def test_a_consumer_without_its_inbox_table_is_refused_at_start(
    server: str, stream: Stream
) -> None:
    fresh = await create_database(server, "no_inbox")
    try:
        async with asyncpg.create_pool(fresh, min_size=1, max_size=2) as pool:
            c = consumer(order_bus("unused"), pool, stream)
            with pytest.raises(ConsumerError, match=r"hookbus_nats\.inbox_plugin\(\)"):
                await c.start()
            assert c.state is ConsumerState.FAILED
    finally:
        await drop_database(server, fresh)


async def test_inbox_rows_are_kept_as_long_as_the_stream_keeps_messages(
    pool: asyncpg.Pool, stream: Stream, projection: str
) -> None:
    from datetime import timedelta

    short = consumer(order_bus(projection), pool, stream, retention=timedelta(minutes=5))
    with pytest.raises(ConsumerError, match="shorter than the stream keeps messages"):
        await short.start()
    assert short.state is ConsumerState.FAILED
    c = consumer(order_bus(projection), pool, stream)
    await c.start()
    assert c.retention == timedelta(hours=1)  # the stream's max_age
    await pool.execute(
        "INSERT INTO hookbus_inbox VALUES "
        "($1, 'old', now() - interval '2 hours'), ($1, 'new', now())",
        c.name,
    )
    assert await c.cleanup_inbox() == 1
    left = await pool.fetch("SELECT msg_id FROM hookbus_inbox WHERE consumer = $1", c.name)
    assert [r[0] for r in left] == ["new"]


async def test_a_message_the_server_gives_up_on_is_dead_lettered_unless_it_was_applied(
    pool: asyncpg.Pool, stream: Stream, projection: str
) -> None:
    c = consumer(order_bus(projection), pool, stream, max_deliver=1, ack_wait=1.0)
    await c.start()
    await publish(stream.js, stream.subject(1), "order_placed", OrderPlaced(1, 10), msg_id="lost")
    await publish(stream.js, stream.subject(2), "order_placed", OrderPlaced(2, 10), msg_id="done")
    # Another process of the same consumer fetches both and dies without an outcome, after
    # it committed the second one (its inbox row is there, its ack never left).
    dying = await stream.js.pull_subscribe_bind(durable=c.name, stream=stream.name)
    assert len(await dying.fetch(2, timeout=5)) == 2
    await record_applied(pool, c.name, ["done"])
    where = {"stream": stream.dead_stream, "prefix": stream.dead_prefix}
    for _ in range(50):  # the server gives up on its next pull after ack_wait, then announces
        await c.poll()
        letters = [s.letter async for s in list_dead_letters(stream.js, c.name, **where)]
        if letters and c.statistics().dead_lettered:
            break
    assert [(d.msg_id, d.reason, d.deliveries) for d in letters] == [
        ("lost", DeadReason.MAX_DELIVERIES, 1)
    ]
    assert msgspec.json.decode(letters[0].data, type=OrderPlaced) == OrderPlaced(1, 10)
    assert c.statistics().dead_lettered == 1


async def test_a_built_in_entity_event_arrives_as_plain_values_in_the_consumers_transaction(
    pool: asyncpg.Pool, stream: Stream, projection: str
) -> None:
    seen: list[tuple[Any, ...]] = []
    bus = Bus()

    @bus.hook("after_add_entity", select=is_instance("Person"))
    async def remember(event: EntityEvent) -> None:
        assert event.tx is current_transaction()  # the consumer's own scope
        seen.append((event.eid, dict(event.edited), event.entity, type(event.edited)))

    wire = {  # what the relay sends for an entity event: plain values, no transaction
        "event": "after_add_entity",
        "etype": "Person",
        "eid": 7,
        "edited": {"name": "Ann"},
        "entity": {"name": "Ann", "age": 40},
    }
    await publish(stream.js, stream.subject("p"), "after_add_entity", wire)
    await drain(consumer(bus, pool, stream), stream.js, stream)
    assert seen == [(7, {"name": "Ann"}, {"name": "Ann", "age": 40}, Edited)]


def test_the_public_names_are_sorted_and_exported() -> None:
    import hookbus_nats

    assert sorted(hookbus_nats.__all__) == hookbus_nats.__all__
    assert all(hasattr(hookbus_nats, name) for name in hookbus_nats.__all__)


async def test_order_per_key_holds_through_a_retry_with_one_message_in_flight(
    pool: asyncpg.Pool, stream: Stream, projection: str
) -> None:
    applied: list[int] = []
    failures = {2: 1}

    def fail(event: Any) -> bool:
        if failures.get(event.order_id, 0) > 0:
            failures[event.order_id] -= 1
            return True
        return False

    bus = order_bus(projection, fail=fail)
    bus.hook("order_placed", priority=10)(lambda event: applied.append(event.order_id))
    for order in range(1, 6):  # key "a" gets 1..5, key "b" one message between each
        await publish(stream.js, stream.subject("a"), "order_placed", OrderPlaced(order, 1))
        await publish(stream.js, stream.subject("b"), "order_placed", OrderPlaced(100 + order, 1))
    # One consumer for key "a" (its subject), one message in flight: order 2 fails once, and
    # nothing after it is applied before its retry.
    c = consumer(bus, pool, stream, subject=stream.subject("a"), max_ack_pending=1, backoff=(0.1,))
    await drain(c, stream.js, stream)
    assert applied == [1, 2, 3, 4, 5]
    assert c.statistics().retried == 1


async def test_a_long_batch_is_kept_in_progress_and_not_redelivered_meanwhile(
    pool: asyncpg.Pool, stream: Stream, projection: str
) -> None:
    bus = order_bus(projection)
    working_on_it = asyncio.Event()

    @bus.hook("order_placed", priority=-1)
    async def slow(event: Any) -> None:
        working_on_it.set()
        await asyncio.sleep(2.5)  # the work itself: 2.5 ack_waits

    name = f"c{secrets.token_hex(4)}"
    worker = consumer(bus, pool, stream, name, ack_wait=1.0)
    other = consumer(order_bus(projection), pool, stream, name, ack_wait=1.0, fetch_timeout=3)
    await worker.start()
    await other.start()
    await publish(stream.js, stream.subject(1), "order_placed", OrderPlaced(1, 10))
    working = asyncio.create_task(worker.poll())
    await working_on_it.wait()
    assert await other.poll() == 0  # nothing redelivered while the hooks run
    await working
    assert await counts(pool, projection) == {1: 1}
    assert (worker.statistics().applied, other.statistics().redelivered) == (1, 0)


async def test_a_batch_whose_connection_is_terminated_applies_each_event_once(
    pool: asyncpg.Pool, dsn: str, stream: Stream, projection: str
) -> None:
    bus = order_bus(projection)
    killed: list[int] = []

    @bus.hook("order_placed", priority=-1)
    async def terminate_my_backend(event: Any) -> None:
        if event.order_id == 3 and not killed:  # the batch's connection dies mid-batch
            killed.append(current_transaction().connection.get_server_pid())  # type: ignore[attr-defined]
            other = await asyncpg.connect(dsn)
            try:
                await other.execute("SELECT pg_terminate_backend($1)", killed[0])
            finally:
                await other.close()

    for order in range(1, 6):
        await publish(stream.js, stream.subject(order), "order_placed", OrderPlaced(order, 10))
    c = consumer(bus, pool, stream, backoff=(0.1,))
    await drain(c, stream.js, stream)
    assert killed
    assert await counts(pool, projection) == {order: 1 for order in range(1, 6)}
    assert (c.statistics().fallbacks, c.statistics().dead_lettered) == (1, 0)


async def test_while_the_database_is_away_a_batch_is_retried_later_without_trying_each_message(
    pool: asyncpg.Pool, stream: Stream, projection: str
) -> None:
    bus = order_bus(projection)
    attempts = 0
    away = True

    @bus.hook("order_placed", priority=-1)
    async def database(event: Any) -> None:
        nonlocal attempts
        if away:
            attempts += 1
            raise ConnectionRefusedError("the database is away")

    for order in range(1, 6):
        await publish(stream.js, stream.subject(order), "order_placed", OrderPlaced(order, 10))
    c = consumer(bus, pool, stream, backoff=(0.2,))
    await c.start()
    assert await c.poll() == 5
    assert attempts == 2  # the batch, then its first message alone: the rest waits too
    assert (c.statistics().retried, c.statistics().applied) == (5, 0)
    away = False
    await drain(c, stream.js, stream)
    assert await counts(pool, projection) == {order: 1 for order in range(1, 6)}


async def test_a_consumer_given_a_jetstream_context_still_works_but_says_it_is_deprecated(
    pool: asyncpg.Pool, stream: Stream, projection: str
) -> None:
    with pytest.warns(DeprecationWarning, match=r"Consumer\(bus, pool, nc, \.\.\.\)"):
        c = Consumer(
            order_bus(projection),
            pool,
            stream.js,
            name=f"c{secrets.token_hex(4)}",
            stream=stream.name,
            dead_letter_stream=stream.dead_stream,
            dead_letter_prefix=stream.dead_prefix,
            fetch_timeout=0.5,
        )
    await publish(stream.js, stream.subject(1), "order_placed", OrderPlaced(1, 10))
    await drain(c, stream.js, stream)
    assert await counts(pool, projection) == {1: 1}


@pytest.mark.parametrize("given", ["nats://127.0.0.1:4222", None])
def test_a_consumer_without_a_nats_connection_is_refused(given: Any) -> None:
    with pytest.raises(TypeError, match=r"nats\.aio\.client\.Client|needs the NATS connection"):
        Consumer(Bus(), None, given, name="c", stream="S")  # type: ignore[arg-type]


async def test_what_arrives_while_a_batch_is_applied_joins_the_batch_fetched_meanwhile(
    pool: asyncpg.Pool, stream: Stream, projection: str
) -> None:
    """The next batch is fetched while one is applied, and that fetch returns with the first
    message to come; what comes after it, before it is applied, joins it: one transaction
    rather than a transaction for the early message and another for the rest."""
    bus = order_bus(projection)
    holding, release = asyncio.Event(), asyncio.Event()

    @bus.hook("order_placed")
    async def hold(event: Any) -> None:
        if event.order_id == 1:
            holding.set()
            await release.wait()

    c = consumer(bus, pool, stream)
    await c.start()
    await publish(stream.js, stream.subject(1), "order_placed", OrderPlaced(1, 10))
    running = asyncio.create_task(c.run())
    await holding.wait()  # order 1 is being applied; the next fetch is out
    await publish(stream.js, stream.subject(2), "order_placed", OrderPlaced(2, 10))
    for _ in range(1000):  # until order 2 was fetched (the server offers nothing to await)
        if await pending(stream.js, stream.name, c.name) == (0, 2):
            break
        await asyncio.sleep(0.01)
    for order in (3, 4):
        await publish(stream.js, stream.subject(order), "order_placed", OrderPlaced(order, 10))
    release.set()
    for _ in range(1000):
        if await counts(pool, projection) == {1: 1, 2: 1, 3: 1, 4: 1}:
            break
        await asyncio.sleep(0.01)
    c.stop()
    await running
    assert c.statistics().batches == 2  # [1], then [2, 3, 4]


async def test_a_consumer_waiting_for_messages_holds_no_transaction(
    pool: asyncpg.Pool, stream: Stream, projection: str
) -> None:
    """Fetches (and the top-up) come before BEGIN, acknowledgements after COMMIT: a consumer
    waiting on NATS holds no transaction, so it never holds an ordered relay's gate on its
    database while it waits."""
    c = consumer(order_bus(projection), pool, stream, fetch_timeout=1.0)
    await c.start()
    await publish(stream.js, stream.subject(1), "order_placed", OrderPlaced(1, 10))
    running = asyncio.create_task(c.run())
    for _ in range(1000):  # until applied (nothing to await): then it waits on its fetch
        if await counts(pool, projection) == {1: 1}:
            break
        await asyncio.sleep(0.01)
    assert await settled(stream.js, stream.name, c.name) == (0, 0)
    open_here = await pool.fetch(
        "SELECT pid, state, backend_xid FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND (state LIKE 'idle in transaction%' OR backend_xid IS NOT NULL)"
    )
    c.stop()
    await running
    assert open_here == []
