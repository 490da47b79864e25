"""The server's shutdown waits for the request scopes still running (a slow postcommit),
``shutdown_wait`` seconds at most, then logs what it abandons: in each form of the lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import anyio
import pytest
from _asgi import call
from fastapi import FastAPI
from hookbus_asgi import LifespanMiddleware, TransactionMiddleware, server_events
from hookbus_asgi import fastapi as hb_fastapi
from hookbus_asgi.litestar import HookbusPlugin
from litestar import Litestar, get
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

import hookbus
from hookbus import Bus, Operation, ServerEvent, Transaction, current_transaction

BODY: dict[str, Any] = {"type": "http.request", "body": b"", "more_body": False}


class Postcommit(Operation):
    """A postcommit that takes as long as the test says."""

    def __init__(self, log: list[str], started: anyio.Event, release: anyio.Event) -> None:
        super().__init__()
        self.log, self.started, self.release = log, started, release

    async def postcommit(self) -> None:
        self.log.append("postcommit started")
        self.started.set()
        await self.release.wait()
        self.log.append("postcommit done")


class Server:
    """Drives an application's lifespan as a server does; its requests share the state."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.started = anyio.Event()
        self.stop = anyio.Event()
        self.stopped = anyio.Event()
        self.sent: list[str] = []

    async def lifespan(self) -> None:
        async def receive() -> dict[str, Any]:
            if not self.started.is_set():
                return {"type": "lifespan.startup"}
            await self.stop.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: dict[str, Any]) -> None:
            self.sent.append(message["type"])
            if message["type"] == "lifespan.startup.complete":
                self.started.set()
            elif message["type"].startswith("lifespan.shutdown"):
                self.stopped.set()

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}
        await self.app(scope, receive, send)

    async def request(self) -> None:
        sent = await call(self.app, [BODY], path="/slow", method="GET", state=self.state)
        assert sent[0]["status"] == 200


def a_bus(log: list[str]) -> Bus:
    bus = Bus()

    @bus.hook("server_shutdown")
    def shutdown(event: ServerEvent) -> None:
        log.append("server_shutdown")

    return bus


def schedule(log: list[str], started: anyio.Event, release: anyio.Event) -> None:
    current_transaction().add(Postcommit(log, started, release))


def with_lifespan_middleware(
    log: list[str], started: anyio.Event, release: anyio.Event, wait: float
) -> Any:
    async def slow(request: Any) -> JSONResponse:
        schedule(log, started, release)
        return JSONResponse({})

    app = Starlette(routes=[Route("/slow", slow)])
    app.add_middleware(TransactionMiddleware, transaction=hookbus.transaction)
    return LifespanMiddleware(app, a_bus(log), shutdown_wait=wait)


def with_server_events(
    log: list[str], started: anyio.Event, release: anyio.Event, wait: float
) -> Any:
    bus = a_bus(log)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with server_events(bus, app, shutdown_wait=wait) as state:
            yield state

    async def slow(request: Any) -> JSONResponse:
        schedule(log, started, release)
        return JSONResponse({})

    app = Starlette(routes=[Route("/slow", slow)], lifespan=lifespan)
    app.add_middleware(TransactionMiddleware, transaction=hookbus.transaction)
    return app


def with_litestar_plugin(
    log: list[str], started: anyio.Event, release: anyio.Event, wait: float
) -> Any:
    @get("/slow")
    async def slow() -> dict[str, str]:
        schedule(log, started, release)
        return {}

    plugin = HookbusPlugin(a_bus(log), hookbus.transaction, shutdown_wait=wait)
    return Litestar(route_handlers=[slow], plugins=[plugin], logging_config=None)


Tx = Annotated[Transaction, hb_fastapi.transaction(hookbus.transaction)]


def with_fastapi_dependency(
    log: list[str], started: anyio.Event, release: anyio.Event, wait: float
) -> Any:
    bus = a_bus(log)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with server_events(bus, app, shutdown_wait=wait) as state:
            yield state

    app = FastAPI(lifespan=lifespan)

    @app.get("/slow")
    async def slow(tx: Tx) -> dict[str, str]:
        schedule(log, started, release)
        return {}

    return app


FORMS = [
    pytest.param(with_lifespan_middleware, id="LifespanMiddleware"),
    pytest.param(with_server_events, id="server_events"),
    pytest.param(with_litestar_plugin, id="litestar"),
    pytest.param(with_fastapi_dependency, id="fastapi dependency"),
]
Make = Callable[[list[str], anyio.Event, anyio.Event, float], Any]


@pytest.mark.parametrize("make", FORMS)
async def test_a_shutdown_during_a_slow_postcommit_waits_for_it(make: Make) -> None:
    log: list[str] = []
    started, release = anyio.Event(), anyio.Event()
    server = Server(make(log, started, release, 30.0))
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.lifespan)
            await server.started.wait()
            tg.start_soon(server.request)
            await started.wait()
            try:
                server.stop.set()  # the server shuts down while the postcommit runs
                await anyio.wait_all_tasks_blocked()
                assert not server.stopped.is_set()  # the shutdown waits for the postcommit
                assert log == ["postcommit started"]
            finally:
                release.set()  # (a postcommit is not cancelled: a failure must let it end)
    assert log == ["postcommit started", "postcommit done", "server_shutdown"]
    assert server.sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


@pytest.mark.parametrize("make", FORMS)
async def test_the_wait_is_bounded_and_what_it_abandons_is_logged(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    started, release = anyio.Event(), anyio.Event()
    server = Server(make(log, started, release, 0.05))
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.lifespan)
            await server.started.wait()
            tg.start_soon(server.request)
            await started.wait()
            try:
                with caplog.at_level(logging.INFO, logger="hookbus.asgi"):
                    server.stop.set()
                    with anyio.fail_after(5):  # the postcommit still runs: shut down anyway
                        await server.stopped.wait()
                assert log == ["postcommit started", "server_shutdown"]
            finally:
                release.set()  # let the request end, for the test to end
    abandoned = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert abandoned == [
        "shutdown: 1 request scope(s) still running after 0.05 s, abandoned: "
        "GET /slow (COMMIT, postcommit)"
    ]


async def test_a_shutdown_with_no_request_running_does_not_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    server = Server(with_lifespan_middleware(log, anyio.Event(), anyio.Event(), 3600.0))
    with anyio.fail_after(10), caplog.at_level(logging.INFO, logger="hookbus.asgi"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.lifespan)
            await server.started.wait()
            server.stop.set()
    assert log == ["server_shutdown"]
    assert caplog.records == []


def test_the_bound_is_checked_when_the_app_is_built() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    for wrong in (-1, "10", None, float("nan")):
        with pytest.raises(ValueError, match="shutdown_wait"):
            LifespanMiddleware(app, Bus(), shutdown_wait=wrong)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="shutdown_wait"):
            server_events(Bus(), shutdown_wait=wrong)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="shutdown_wait"):
            HookbusPlugin(Bus(), hookbus.transaction, shutdown_wait=wrong)  # type: ignore[arg-type]
