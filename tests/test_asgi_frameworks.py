"""FastAPI's dependency and Litestar's plugin, in process, on the real PostgreSQL."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import asyncpg
import hookbus_asyncpg
import pytest
from _asgi import served
from fastapi import FastAPI, HTTPException
from hookbus_asgi import fastapi as hb_fastapi
from hookbus_asgi import server_events
from hookbus_asgi.litestar import HookbusPlugin
from hookbus_asyncpg import AsyncpgTransaction
from litestar import Litestar, Response, post
from litestar.params import FromPath, FromQuery

import hookbus
from hookbus import Bus, ServerEvent, SessionEvent, ValidationError, current_transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS things (name text PRIMARY KEY);
CREATE TABLE IF NOT EXISTS owners (id int PRIMARY KEY);
CREATE TABLE IF NOT EXISTS owned (
    name text, owner int REFERENCES owners (id) DEFERRABLE INITIALLY DEFERRED
);
"""


async def count(pool: asyncpg.Pool, name: str) -> int:
    n = await pool.fetchval("SELECT count(*) FROM things WHERE name = $1", name)
    assert isinstance(n, int)
    return n


async def insert(name: str, *, dangling: bool = False) -> None:
    conn = current_transaction().connection  # type: ignore[attr-defined]
    await conn.execute("INSERT INTO things VALUES ($1)", name)
    if dangling:  # an FK checked at COMMIT, to an owner that does not exist
        await conn.execute("INSERT INTO owned VALUES ($1, 404)", name)


def recording_bus(log: list[str]) -> Bus:
    bus = Bus()

    @bus.hook("server_startup", "server_shutdown")
    def server(event: ServerEvent) -> None:
        log.append(event.event)

    @bus.hook("session_open", "session_close")
    def session(event: SessionEvent) -> None:
        log.append(event.event)

    return bus


# -- FastAPI ---------------------------------------------------------------------------------

# FastAPI reads the endpoint's annotations in the module's namespace: Tx lives here, on the
# pool of the application being served.
_fastapi_state: dict[str, asyncpg.Pool] = {}
Tx = Annotated[
    AsyncpgTransaction,
    hb_fastapi.transaction(lambda: hookbus_asyncpg.transaction(_fastapi_state["pool"])),
]


def fastapi_app(dsn: str, log: list[str]) -> FastAPI:
    bus = recording_bus(log)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with asyncpg.create_pool(dsn, min_size=1, max_size=5) as pool:
            await pool.execute(SCHEMA)
            _fastapi_state["pool"] = pool
            async with server_events(bus, app):
                yield

    app = FastAPI(lifespan=lifespan)
    hb_fastapi.install_error_handlers(app)

    @app.post("/things/{name}")
    async def add(name: str, tx: Tx, dangling: bool = False, invalid: bool = False) -> Any:
        assert current_transaction() is tx  # the scope reaches the endpoint's context
        await insert(name, dangling=dangling)
        if invalid:
            raise ValidationError(None, {"name": "refused"})
        return {"name": name}

    @app.post("/refuse/{name}")
    async def refuse(name: str, tx: Tx) -> Any:
        await insert(name)
        raise HTTPException(404, "no such thing")

    return app


async def test_fastapi_dependency_commits_before_the_response(dsn: str, pool: asyncpg.Pool) -> None:
    log: list[str] = []
    name = secrets.token_hex(4)
    async with served(fastapi_app(dsn, log)) as client:
        response = await client.post(f"/things/{name}")
        assert response.status_code == 200
        assert await count(pool, name) == 1  # committed before the client got the answer
    assert log == ["server_startup", "server_shutdown"]


async def test_fastapi_a_deferred_constraint_failing_at_commit_is_409_not_200(
    dsn: str, pool: asyncpg.Pool
) -> None:
    name = secrets.token_hex(4)
    async with served(fastapi_app(dsn, [])) as client:
        response = await client.post(f"/things/{name}", params={"dangling": True})
    assert response.status_code == 409
    assert response.json()["sqlstate"] == "23503"
    assert await count(pool, name) == 0


def test_fastapi_dependency_refuses_what_cannot_open_a_scope() -> None:
    with pytest.raises(TypeError, match="needs what opens a scope"):
        hb_fastapi.transaction()
    with pytest.raises(TypeError, match="not int"):
        hb_fastapi.transaction(5)  # type: ignore[arg-type]


# -- Litestar --------------------------------------------------------------------------------


def litestar_app(dsn: str, log: list[str]) -> Litestar:
    @contextlib.asynccontextmanager
    async def open_pool(app: Litestar) -> AsyncIterator[None]:
        async with asyncpg.create_pool(dsn, min_size=1, max_size=5) as pool:
            await pool.execute(SCHEMA)
            app.state.pool = pool
            log.append("pool open")
            yield
            log.append("pool closing")

    @post("/things/{name:str}")
    async def add(
        name: FromPath[str], dangling: FromQuery[bool] = False, invalid: FromQuery[bool] = False
    ) -> dict[str, str]:
        await insert(name, dangling=dangling)
        if invalid:
            raise ValidationError(None, {"name": "refused"})
        return {"name": name}

    @post("/refuse/{name:str}")
    async def refuse(name: FromPath[str]) -> Response[dict[str, str]]:
        await insert(name)
        return Response({"detail": "no"}, status_code=404)

    app = Litestar(
        route_handlers=[add, refuse],
        lifespan=[open_pool],
        plugins=[
            HookbusPlugin(recording_bus(log), lambda: hookbus_asyncpg.transaction(app.state.pool))
        ],
        # Litestar's default logging config installs handlers on the process's loggers that
        # outlive the test session's streams: the test app keeps the process's logging as is.
        logging_config=None,
    )
    return app


async def test_litestar_plugin_server_and_session_events_and_a_committed_request(
    dsn: str, pool: asyncpg.Pool
) -> None:
    log: list[str] = []
    name = secrets.token_hex(4)
    async with served(litestar_app(dsn, log)) as client:
        response = await client.post(f"/things/{name}")
        assert response.status_code == 201
        assert await count(pool, name) == 1
    assert log == [
        "pool open",
        "server_startup",
        "session_open",
        "session_close",
        "server_shutdown",
        "pool closing",
    ]


async def test_litestar_a_deferred_constraint_failing_at_commit_is_409(
    dsn: str, pool: asyncpg.Pool
) -> None:
    name = secrets.token_hex(4)
    async with served(litestar_app(dsn, [])) as client:
        response = await client.post(f"/things/{name}", params={"dangling": True})
    assert response.status_code == 409
    assert await count(pool, name) == 0


def test_litestar_plugin_refuses_bad_options() -> None:
    with pytest.raises(ValueError, match="retries"):
        HookbusPlugin(Bus(), hookbus.transaction, retries=-2)
    with pytest.raises(ValueError, match="what opens a scope"):
        HookbusPlugin(Bus())


# -- both frameworks -------------------------------------------------------------------------

# /refuse/ answers 404 through FastAPI's HTTPException and through a Litestar Response.
APPS = [pytest.param(fastapi_app, id="fastapi"), pytest.param(litestar_app, id="litestar")]


@pytest.mark.parametrize("make_app", APPS)
async def test_validation_error_is_422_and_rolls_back(
    dsn: str, pool: asyncpg.Pool, make_app: Callable[[str, list[str]], FastAPI | Litestar]
) -> None:
    name = secrets.token_hex(4)
    async with served(make_app(dsn, [])) as client:
        response = await client.post(f"/things/{name}", params={"invalid": True})
    assert response.status_code == 422
    assert response.json() == {"eid": None, "errors": {"name": "refused"}}
    assert await count(pool, name) == 0


@pytest.mark.parametrize("make_app", APPS)
async def test_a_404_rolls_back(
    dsn: str, pool: asyncpg.Pool, make_app: Callable[[str, list[str]], FastAPI | Litestar]
) -> None:
    name = secrets.token_hex(4)
    async with served(make_app(dsn, [])) as client:
        response = await client.post(f"/refuse/{name}")
    assert response.status_code == 404
    assert await count(pool, name) == 0
