"""A FastAPI back end on hookbus: server events, a transaction per request, 422 from a hook.

Run it (one command; PostgreSQL from HOOKBUS_DSN, else the local server, else an embedded one)::

    HOOKBUS_DSN=postgresql://postgres@127.0.0.1:5432/test .venv/bin/python examples/web_fastapi.py

then ``curl -X POST localhost:8000/people -H 'content-type: application/json' -d
'{"name": "Ann", "age": 40}'`` (201), the same with ``"age": 130`` (422), ``curl
localhost:8000/people/1`` and ``curl localhost:8000/mails``. The database is a fresh one,
dropped when the server stops. ``PORT`` changes the port.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

import asyncpg
import hookbus_asyncpg
import uvicorn
from _people import SENT, bus, store
from fastapi import FastAPI, HTTPException
from hookbus_asgi import server_events
from hookbus_asgi.fastapi import install_error_handlers, transaction
from hookbus_asyncpg import AsyncpgTransaction
from hookbus_asyncpg.testing import choose_server, throwaway_database
from pydantic import BaseModel


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """Open the pool, then run the server_startup hooks; the reverse at the end."""
    with choose_server().start() as server_dsn:
        async with (
            throwaway_database(server_dsn, "web_fastapi") as dsn,
            asyncpg.create_pool(dsn, min_size=1, max_size=4) as pool,
        ):
            app.state.pool = pool
            # the state lets the shutdown wait for requests still ending (postcommit)
            async with server_events(bus, app) as state:
                yield state


app = FastAPI(lifespan=lifespan)
install_error_handlers(app)  # ValidationError 422, a conflict at COMMIT 409, unknown outcome 503
# The request's scope, opened by the function given: committed when the endpoint returns,
# BEFORE the response is sent.
Tx = Annotated[AsyncpgTransaction, transaction(lambda: hookbus_asyncpg.transaction(app.state.pool))]


class NewPerson(BaseModel):
    name: str
    age: int | None = None


@app.post("/people", status_code=201)
async def add_person(person: NewPerson, tx: Tx) -> dict[str, Any]:
    eid = await store.insert("Person", **person.model_dump(exclude_none=True))
    return {"eid": eid}


@app.get("/people/{eid}")
async def get_person(eid: int, tx: Tx) -> dict[str, Any]:
    try:
        return dict(await store.get(eid))
    except LookupError:
        raise HTTPException(404, f"no entity {eid}") from None


@app.get("/mails")
async def mails() -> list[str]:
    return SENT


if __name__ == "__main__":
    # --lifespan on: a failing startup hook stops the server instead of serving anyway.
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")), lifespan="on")
