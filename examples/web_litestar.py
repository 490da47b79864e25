"""A Litestar back end on hookbus: the same application as web_fastapi.py, with one plugin.

Run it (one command; PostgreSQL from HOOKBUS_DSN, else the local server, else an embedded one)::

    HOOKBUS_DSN=postgresql://postgres@127.0.0.1:5432/test .venv/bin/python examples/web_litestar.py

and query it as web_fastapi.py says. ``HookbusPlugin`` adds the server events to the
lifespan, session events and a transaction per request (committed before the response
starts, rolled back on a 4xx/5xx), and the error answers (ValidationError 422...).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import hookbus_asyncpg
import msgspec
import uvicorn
from _people import SENT, bus, store
from hookbus_asgi.litestar import HookbusPlugin
from hookbus_asyncpg.testing import choose_server, throwaway_database
from litestar import Litestar, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath


@contextlib.asynccontextmanager
async def open_pool(app: Litestar) -> AsyncIterator[None]:
    """The pool; the plugin's server events run inside this context."""
    with choose_server().start() as server_dsn:
        async with (
            throwaway_database(server_dsn, "web_litestar") as dsn,
            asyncpg.create_pool(dsn, min_size=1, max_size=4) as pool,
        ):
            app.state.pool = pool
            yield


class NewPerson(msgspec.Struct):
    name: str
    age: int | None = None


@post("/people")
async def add_person(data: NewPerson) -> dict[str, Any]:
    edits = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not None}
    return {"eid": await store.insert("Person", **edits)}


@get("/people/{eid:int}")
async def get_person(eid: FromPath[int]) -> dict[str, Any]:
    try:
        return dict(await store.get(eid))
    except LookupError:
        raise NotFoundException(f"no entity {eid}") from None


@get("/mails")
async def mails() -> list[str]:
    return SENT


app = Litestar(
    route_handlers=[add_person, get_person, mails],
    lifespan=[open_pool],
    # each request's scope: a hookbus_asyncpg transaction on the pool the lifespan opened
    plugins=[HookbusPlugin(bus, lambda: hookbus_asyncpg.transaction(app.state.pool))],
)

if __name__ == "__main__":
    # --lifespan on: a failing startup hook stops the server instead of serving anyway.
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")), lifespan="on")
