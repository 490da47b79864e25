"""A client gone while its handler runs: the scope rolls back, in each form that can see it.

The middleware (and so the Litestar plugin) reads the request's ``receive`` in a task of its
own: once the body is in, a disconnect cancels the handler and rolls the scope back, even
though the handler never calls ``receive()`` again. The FastAPI dependency cannot see it
(docs/web.md): the request commits.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import anyio
import asyncpg
import hookbus_asyncpg
import httpx
import pytest
import pytest_asyncio
from _asgi import call
from _uvicorn import Uvicorn, uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from hookbus_asgi import TransactionMiddleware
from hookbus_asgi import fastapi as hb_fastapi
from hookbus_asgi.litestar import HookbusPlugin
from hookbus_asyncpg import AsyncpgTransaction
from litestar import Litestar, get
from starlette.responses import JSONResponse

import hookbus
from hookbus import Bus, Operation, current_transaction

TESTS = Path(__file__).resolve().parent
BODY: dict[str, Any] = {"type": "http.request", "body": b"", "more_body": False}
GONE: dict[str, Any] = {"type": "http.disconnect"}


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def setup(pool: asyncpg.Pool) -> None:
    await pool.execute("CREATE TABLE IF NOT EXISTS visits (name text)")


async def visits(pool: asyncpg.Pool, name: str) -> int:
    n = await pool.fetchval("SELECT count(*) FROM visits WHERE name = $1", name)
    assert isinstance(n, int)
    return n


async def running(pool: asyncpg.Pool, pid: int, statement: str) -> bool:
    """Whether the server runs ``statement`` on backend ``pid`` now."""
    return bool(
        await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active' "
            "AND query = $2",
            pid,
            statement,
        )
    )


async def visit(name: str) -> None:
    conn = current_transaction().connection  # type: ignore[attr-defined]
    await conn.execute("INSERT INTO visits VALUES ($1)", name)


class Record(Operation):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    async def postcommit(self) -> None:
        self.log.append("postcommit")

    async def rollback(self) -> None:
        self.log.append("rollback")


def leaves_once(event: anyio.Event) -> Any:
    """A message the client sends when ``event`` is set: it disconnects."""

    async def leave() -> dict[str, Any]:
        await event.wait()
        return GONE

    return leave


def hanging_app(name: str, log: list[str], inserted: anyio.Event) -> Any:
    """A handler that writes, then waits forever without reading its request again."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await visit(name)
        current_transaction().add(Record(log))
        inserted.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            log.append("handler cancelled")
            raise

    return app


@pytest.mark.parametrize("read_body", [True, False], ids=["body read", "body never read"])
async def test_a_client_gone_while_the_handler_runs_rolls_back(
    pool: asyncpg.Pool, read_body: bool
) -> None:
    await setup(pool)
    name, log, inserted = unique("gone"), [], anyio.Event()
    hanging = hanging_app(name, log, inserted)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if read_body:
            assert (await receive())["type"] == "http.request"
        await hanging(scope, receive, send)

    middleware = TransactionMiddleware(app, lambda: hookbus_asyncpg.transaction(pool))
    with anyio.fail_after(10):
        sent = await call(middleware, [BODY, leaves_once(inserted)], method="GET")
    assert sent == []  # no one to answer
    assert log == ["handler cancelled", "rollback"]
    assert await visits(pool, name) == 0


async def test_a_statement_running_when_the_client_leaves_is_cancelled_and_rolled_back(
    pool: asyncpg.Pool,
) -> None:
    await setup(pool)
    name, started, pids = unique("slow"), anyio.Event(), []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await visit(name)
        conn = current_transaction().connection  # type: ignore[attr-defined]
        pids.append(conn.get_server_pid())
        started.set()
        await conn.execute("SELECT pg_sleep(60)")  # cancelled: asyncpg cancels it on the server

    async def leave_once_it_runs() -> dict[str, Any]:
        # A cancel the server gets before it reads the statement is dropped (the statement
        # then runs its 60 s): the client leaves once the server runs it.
        await started.wait()
        for _ in range(1000):  # the server offers nothing to await
            if await running(pool, pids[0], "SELECT pg_sleep(60)"):
                return GONE
            await anyio.sleep(0.01)
        raise AssertionError("the statement never ran")

    middleware = TransactionMiddleware(app, lambda: hookbus_asyncpg.transaction(pool))
    with anyio.fail_after(20):
        assert await call(middleware, [BODY, leave_once_it_runs]) == []
    assert await visits(pool, name) == 0
    # the pool got its connection back, usable
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1


async def test_a_client_leaving_after_the_response_started_changes_nothing(
    pool: asyncpg.Pool,
) -> None:
    """The scope committed at the response start: the rest of the handler is not cancelled
    (Starlette's background tasks run there, after the body is sent)."""
    await setup(pool)
    name, answered, log = unique("answered"), anyio.Event(), []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await visit(name)
        current_transaction().add(Record(log))
        await JSONResponse({})(scope, receive, send)
        answered.set()
        await anyio.wait_all_tasks_blocked()  # the disconnect arrives meanwhile
        log.append("background work done")

    middleware = TransactionMiddleware(app, lambda: hookbus_asyncpg.transaction(pool))
    with anyio.fail_after(10):
        sent = await call(middleware, [BODY, leaves_once(answered)])
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert log == ["postcommit", "background work done"]
    assert await visits(pool, name) == 1


# -- the Litestar plugin (its middleware) and the FastAPI dependency ---------------------------


@contextlib.asynccontextmanager
async def started(app: Any) -> AsyncIterator[Any]:
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        yield manager.app


async def test_litestar_plugin_rolls_back_when_the_client_leaves(
    dsn: str, pool: asyncpg.Pool
) -> None:
    await setup(pool)
    name, log, inserted = unique("litestar"), [], anyio.Event()

    @contextlib.asynccontextmanager
    async def open_pool(app: Litestar) -> AsyncIterator[None]:
        async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as opened:
            app.state.pool = opened
            yield

    @get("/hang")
    async def hang() -> None:
        await visit(name)
        current_transaction().add(Record(log))
        inserted.set()
        await anyio.sleep_forever()

    app = Litestar(
        route_handlers=[hang],
        lifespan=[open_pool],
        plugins=[HookbusPlugin(Bus(), lambda: hookbus_asyncpg.transaction(app.state.pool))],
        logging_config=None,
    )
    async with started(app) as served:
        with anyio.fail_after(10):
            sent = await call(served, [BODY, leaves_once(inserted)], path="/hang", method="GET")
    assert sent == []
    assert log == ["rollback"]
    assert await visits(pool, name) == 0


_fastapi_pool: dict[str, asyncpg.Pool] = {}
Tx = Annotated[
    AsyncpgTransaction,
    hb_fastapi.transaction(lambda: hookbus_asyncpg.transaction(_fastapi_pool["pool"])),
]


async def test_fastapi_dependency_leaves_disconnects_to_the_middleware(pool: asyncpg.Pool) -> None:
    """As docs/web.md says: the dependency does not see the client leave; the handler runs
    to its end and the request commits. (The middleware form rolls it back.)"""
    await setup(pool)
    _fastapi_pool["pool"] = pool
    name, log, inserted, go_on = unique("fastapi"), [], anyio.Event(), anyio.Event()
    app = FastAPI()

    @app.get("/wait")
    async def wait(tx: Tx) -> dict[str, str]:
        await visit(name)
        tx.add(Record(log))
        inserted.set()
        await go_on.wait()
        return {"name": name}

    sent: list[dict[str, Any]] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def request() -> None:
                sent.extend(await call(app, [BODY, GONE], path="/wait", method="GET"))

            tg.start_soon(request)
            await inserted.wait()
            go_on.set()  # the client is gone already: the handler carries on to its end
    assert sent[0]["status"] == 200
    assert log == ["postcommit"]
    assert await visits(pool, name) == 1


# -- under a real server ---------------------------------------------------------------------


@pytest_asyncio.fixture
async def served_app(dsn: str) -> AsyncIterator[Uvicorn]:
    async with uvicorn(
        "--factory _web_app:create_app", cwd=TESTS, env={"HOOKBUS_WEB_DSN": dsn}
    ) as server:
        await server.wait_listening()
        yield server


async def _transaction_state(pool: asyncpg.Pool, name: str) -> str | None:
    state = await pool.fetchval(
        "SELECT state FROM pg_stat_activity WHERE application_name = $1", name
    )
    assert state is None or isinstance(state, str)
    return state


async def _poll(pool: asyncpg.Pool, name: str, until: Any) -> None:
    """Wait (10 s at most) until the state of ``name``'s transaction passes ``until``:
    another process's transaction offers nothing to await."""
    with anyio.fail_after(10):
        while not until(await _transaction_state(pool, name)):  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def test_uvicorn_a_client_gone_while_the_handler_hangs_rolls_back(
    served_app: Uvicorn, pool: asyncpg.Pool
) -> None:
    name = unique("hang")
    async with (
        httpx.AsyncClient(base_url=served_app.url, timeout=30) as client,
        anyio.create_task_group() as tg,
    ):

        async def post() -> None:
            await client.post("/hang", json={"name": name})

        tg.start_soon(post)
        await _poll(pool, name, lambda state: state == "idle in transaction")
        tg.cancel_scope.cancel()  # the client gives up: httpx closes the connection
    # the server saw the disconnect, cancelled the handler, and rolled back
    await _poll(pool, name, lambda state: state is None)
    assert await pool.fetchval("SELECT count(*) FROM items WHERE name = $1", name) == 0
    assert await pool.fetchval("SELECT count(*) FROM postcommits WHERE name = $1", name) == 0


# -- Expect: 100-continue ----------------------------------------------------------------------


def continue_scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "method": "POST",
        "path": "/upload",
        "headers": [(b"content-length", b"5"), (b"expect", b"100-continue")],
    }


async def test_a_request_expecting_100_continue_is_not_read_unless_the_app_asks() -> None:
    """The server answers 100 Continue at the first receive(): an application refusing the
    upload without reading it must not have it sent for nothing."""
    asked: list[str] = []
    sent: list[int] = []

    async def receive() -> dict[str, Any]:
        asked.append("receive")
        return {"type": "http.request", "body": b"12345", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent.append(message["status"])

    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        await anyio.wait_all_tasks_blocked()  # the listener's task had every chance to read
        await JSONResponse({}, status_code=401)(scope, receive, send)

    await TransactionMiddleware(refuse, hookbus.transaction)(continue_scope(), receive, send)
    assert (sent, asked) == ([401], [])


async def test_a_request_expecting_100_continue_is_watched_once_the_app_reads_it() -> None:
    log: list[str] = []
    inserted = anyio.Event()
    messages = [{"type": "http.request", "body": b"12345", "more_body": False}, GONE]

    async def receive() -> dict[str, Any]:
        if messages[0] is GONE:
            await inserted.wait()
        return messages.pop(0)

    async def upload(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["body"] == b"12345"
        current_transaction().add(Record(log))
        inserted.set()
        await anyio.sleep_forever()

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("no one to answer")

    with anyio.fail_after(10):
        await TransactionMiddleware(upload, hookbus.transaction)(continue_scope(), receive, send)
    assert log == ["rollback"]
