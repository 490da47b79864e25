"""Server events from the ASGI lifespan: LifespanMiddleware and server_events."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _asgi import run_lifespan, served
from hookbus_asgi import LifespanMiddleware, server_events
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from hookbus import Bus, ServerEvent


def recording_bus(log: list[str], *, fail: str | None = None) -> Bus:
    """A bus whose server hooks append to ``log``; the hook of event ``fail`` then raises."""
    bus = Bus()

    @bus.hook("server_startup", "server_shutdown")
    def record(event: ServerEvent) -> None:
        log.append(event.event)
        if event.event == fail:
            raise RuntimeError(f"{event.event} hook fails on purpose")

    return bus


def starlette_app(log: list[str], *, fail_own_startup: bool = False) -> Starlette:
    """A Starlette application whose own lifespan and one endpoint append to ``log``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.append("app start")
        if fail_own_startup:
            raise RuntimeError("the application's own start-up fails")
        yield
        log.append("app stop")

    async def hello(request: Any) -> PlainTextResponse:
        log.append("served")
        return PlainTextResponse("hello")

    return Starlette(routes=[Route("/", hello)], lifespan=lifespan)


async def test_startup_runs_after_the_apps_own_start_and_shutdown_before_its_stop() -> None:
    log: list[str] = []
    app = LifespanMiddleware(starlette_app(log), recording_bus(log))
    async with served(app) as client:
        assert (await client.get("/")).text == "hello"
    assert log == ["app start", "server_startup", "served", "server_shutdown", "app stop"]


async def test_a_failing_startup_hook_fails_the_start_and_still_shuts_down() -> None:
    log: list[str] = []
    app = LifespanMiddleware(starlette_app(log), recording_bus(log, fail="server_startup"))
    sent = await run_lifespan(app)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "server_startup hook fails on purpose" in sent[0]["message"]
    # shutdown hooks ran after the failed start, and the application stopped its own parts
    assert log == ["app start", "server_startup", "server_shutdown", "app stop"]


async def test_a_failing_shutdown_hook_fails_the_shutdown_after_the_app_stopped() -> None:
    log: list[str] = []
    app = LifespanMiddleware(starlette_app(log), recording_bus(log, fail="server_shutdown"))
    sent = await run_lifespan(app)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.failed"]
    assert "server_shutdown hook fails on purpose" in sent[1]["message"]
    assert log == ["app start", "server_startup", "server_shutdown", "app stop"]


async def test_the_apps_own_failed_start_runs_no_hook() -> None:
    log: list[str] = []
    app = LifespanMiddleware(starlette_app(log, fail_own_startup=True), recording_bus(log))
    sent = await run_lifespan(app)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert log == ["app start"]


async def test_an_app_without_a_lifespan_gets_the_server_events() -> None:
    log: list[str] = []

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http", "no lifespan here"
        await PlainTextResponse("bare")(scope, receive, send)

    app = LifespanMiddleware(bare, recording_bus(log), server_app="the app")
    async with served(app) as client:
        assert (await client.get("/")).text == "bare"
    assert log == ["server_startup", "server_shutdown"]


async def test_the_events_carry_the_application() -> None:
    seen: list[Any] = []
    bus = Bus()

    @bus.hook("server_startup", "server_shutdown")
    def record(event: ServerEvent) -> None:
        seen.append(event.app)

    inner = starlette_app([])
    await run_lifespan(LifespanMiddleware(inner, bus))
    assert seen == [inner, inner]


async def test_server_events_in_a_starlette_lifespan() -> None:
    log: list[str] = []
    bus = recording_bus(log)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.append("pool open")
        async with server_events(bus, app):
            yield
        log.append("pool closed")

    async with served(Starlette(lifespan=lifespan)):
        log.append("serving")
    assert log == ["pool open", "server_startup", "serving", "server_shutdown", "pool closed"]


async def test_server_events_shut_down_after_a_failed_startup() -> None:
    log: list[str] = []
    bus = recording_bus(log, fail="server_startup")
    with pytest.raises(RuntimeError, match="server_startup hook fails on purpose"):
        async with server_events(bus):
            log.append("never")
    assert log == ["server_startup", "server_shutdown"]


def test_a_bus_is_required() -> None:
    with pytest.raises(TypeError, match=r"hookbus\.Bus"):
        LifespanMiddleware(starlette_app([]), object())  # type: ignore[arg-type]
