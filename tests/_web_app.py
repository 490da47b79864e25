"""The ASGI application the web tests serve, in process and under uvicorn.

``create_app(dsn)`` (or ``uvicorn --factory _web_app:create_app`` with ``HOOKBUS_WEB_DSN``)
builds a Starlette application wrapped in hookbus_asgi's three middlewares. Its lifespan
opens the pool and the tables; the startup and shutdown hooks write a row to ``lifecycle``
(``HOOKBUS_WEB_FAIL_STARTUP=1`` makes the startup hook raise); committed requests schedule an
operation whose postcommit writes to ``postcommits``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import hookbus_asyncpg
from hookbus_asgi import (
    ASGIApp,
    LifespanMiddleware,
    SessionMiddleware,
    TransactionMiddleware,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from hookbus import (
    Bus,
    Operation,
    ServerEvent,
    SessionEvent,
    ValidationError,
    current_transaction,
    transaction_data,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS lifecycle (event text, pid int);
CREATE TABLE IF NOT EXISTS items (name text PRIMARY KEY);
CREATE TABLE IF NOT EXISTS postcommits (name text);
CREATE TABLE IF NOT EXISTS parents (id int PRIMARY KEY);
CREATE TABLE IF NOT EXISTS children (
    name text,
    parent int REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED
);
"""


class RecordPostcommit(Operation):
    """Writes the request's name to ``postcommits`` once the request's data is committed,
    through a pool of its own (tests/test_asgi_load.py borrows from the request's pool)."""

    def __init__(self, pool: asyncpg.Pool, name: str) -> None:
        super().__init__()
        self.pool, self.name = pool, name

    async def postcommit(self) -> None:
        await self.pool.execute("INSERT INTO postcommits (name) VALUES ($1)", self.name)


def create_app(dsn: str | None = None) -> ASGIApp:
    """The application; ``dsn`` defaults to ``HOOKBUS_WEB_DSN``."""
    dsn = dsn or os.environ["HOOKBUS_WEB_DSN"]
    fail_startup = os.environ.get("HOOKBUS_WEB_FAIL_STARTUP") == "1"
    bus = Bus()
    state: dict[str, Any] = {"sessions": []}

    def pool() -> asyncpg.Pool:
        return state["pool"]

    @bus.hook("server_startup")
    async def record_startup(event: ServerEvent) -> None:
        await pool().execute("INSERT INTO lifecycle VALUES ('startup', $1)", os.getpid())
        if fail_startup:
            raise RuntimeError("the startup hook fails on purpose")

    @bus.hook("server_shutdown")
    async def record_shutdown(event: ServerEvent) -> None:
        await pool().execute("INSERT INTO lifecycle VALUES ('shutdown', $1)", os.getpid())

    @bus.hook("session_open", "session_close")
    def record_session(event: SessionEvent) -> None:
        state["sessions"].append((event.event, event.session["path"]))

    def add_item(name: str) -> Any:
        tx = current_transaction()
        tx.add(RecordPostcommit(state["side"], name))
        return tx.connection.execute("INSERT INTO items (name) VALUES ($1)", name)  # type: ignore[attr-defined]

    async def items(request: Request) -> JSONResponse:
        body = await request.json()
        await add_item(body["name"])
        status = body.get("status", 200)
        if body.get("raise"):
            raise RuntimeError("the endpoint fails on purpose")
        if body.get("invalid"):
            raise ValidationError(None, {"name": f"{body['name']} is refused"})
        return JSONResponse({"name": body["name"]}, status_code=status)

    async def deferred(request: Request) -> JSONResponse:
        name = (await request.json())["name"]
        await add_item(name)
        conn = current_transaction().connection  # type: ignore[attr-defined]
        await conn.execute("INSERT INTO children (name, parent) VALUES ($1, 404)", name)
        return JSONResponse({"name": name})  # the FK is checked at COMMIT: it fails there

    async def own_scope(request: Request) -> JSONResponse:
        n = int(request.path_params["n"])
        tx = current_transaction()
        transaction_data()["n"] = n
        tx.add(RecordPostcommit(state["side"], f"scope-{n}"))
        # A round trip on the scope's connection lets the other requests interleave.
        seen = await tx.connection.fetchval("SELECT $1::int", n)  # type: ignore[attr-defined]
        ops = [op.name for op in current_transaction().operations]  # type: ignore[attr-defined]
        return JSONResponse({"n": seen, "data": transaction_data(), "ops": ops})

    async def stream(request: Request) -> StreamingResponse:
        name = (await request.json())["name"]
        await add_item(name)

        async def chunks() -> AsyncIterator[bytes]:
            for part in ("one ", "two ", "three"):
                yield part.encode()

        return StreamingResponse(chunks(), status_code=(await request.json()).get("status", 200))

    async def hang(request: Request) -> JSONResponse:
        """Insert, name the transaction after the item (pg_stat_activity shows it), never end."""
        name = (await request.json())["name"]
        await add_item(name)
        conn = current_transaction().connection  # type: ignore[attr-defined]
        await conn.execute("SELECT set_config('application_name', $1, true)", name)
        await anyio.sleep_forever()  # the client gives up: only its disconnect ends this
        raise AssertionError("unreachable")

    async def sessions(request: Request) -> JSONResponse:
        return JSONResponse(state["sessions"])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with (
            asyncpg.create_pool(dsn, min_size=1, max_size=20) as opened,
            asyncpg.create_pool(dsn, min_size=1, max_size=4) as side,
        ):
            await opened.execute(SCHEMA)
            state["pool"], state["side"] = opened, side
            yield

    app = Starlette(
        routes=[
            Route("/items", items, methods=["POST"]),
            Route("/deferred", deferred, methods=["POST"]),
            Route("/scope/{n}", own_scope),
            Route("/stream", stream, methods=["POST"]),
            Route("/hang", hang, methods=["POST"]),
            Route("/sessions", sessions),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(
        TransactionMiddleware, transaction=lambda: hookbus_asyncpg.transaction(pool())
    )
    return LifespanMiddleware(SessionMiddleware(app, bus), bus)
