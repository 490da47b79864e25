"""The two defects a busy back end hit (issue 14), through the middleware, on PostgreSQL.

- A request's postcommit that borrows from the request's own pool: 20 concurrent requests on
  a pool of 5 must all finish (the scope gives its connection back before postcommit runs).
- A request that never touches the database must cost it nothing: no pool acquisition and no
  statement (the scope begins lazily).
"""

from __future__ import annotations

import secrets
from typing import Any

import anyio
import asyncpg
import hookbus_asyncpg
from _asgi import call
from hookbus_asgi import TransactionMiddleware
from starlette.responses import JSONResponse

from hookbus import Operation, current_transaction

BODY: dict[str, Any] = {"type": "http.request", "body": b"", "more_body": False}
SCHEMA = """
CREATE TABLE IF NOT EXISTS load_items (name text PRIMARY KEY);
CREATE TABLE IF NOT EXISTS load_postcommits (name text);
"""


class Borrowing(Operation):
    """A postcommit that takes a connection from the request's own pool."""

    def __init__(self, pool: asyncpg.Pool, name: str) -> None:
        super().__init__()
        self.pool, self.name = pool, name

    async def postcommit(self) -> None:
        await self.pool.execute("INSERT INTO load_postcommits VALUES ($1)", self.name)


async def terminate_after(pool: asyncpg.Pool, seconds: float) -> None:
    """Unstick the test if it deadlocks: a postcommit holding a connection while it waits
    for another ignores cancellation; closing the pool's connections ends it."""
    await anyio.sleep(seconds)
    pool.terminate()


async def test_20_concurrent_requests_whose_postcommit_borrows_from_a_pool_of_5_all_finish(
    dsn: str,
) -> None:
    tag = secrets.token_hex(3)
    async with asyncpg.create_pool(dsn, min_size=5, max_size=5) as pool:
        await pool.execute(SCHEMA)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            n = int(scope["path"].strip("/"))
            name = f"{tag}-{n}"
            tx = current_transaction()
            await tx.connection.execute("INSERT INTO load_items VALUES ($1)", name)  # type: ignore[attr-defined]
            tx.add(Borrowing(pool, name))
            status = 409 if n % 4 == 0 else 201  # one in four rolls back: no postcommit
            await JSONResponse({}, status_code=status)(scope, receive, send)

        middleware = TransactionMiddleware(app, lambda: hookbus_asyncpg.transaction(pool))
        answers: dict[int, int] = {}

        async def request(n: int) -> None:
            sent = await call(middleware, [BODY], path=f"/{n}")
            answers[n] = sent[0]["status"]

        async with anyio.create_task_group() as guard:
            guard.start_soon(terminate_after, pool, 6.0)
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    for n in range(20):
                        tg.start_soon(request, n)
            guard.cancel_scope.cancel()
        committed = sorted(f"{tag}-{n}" for n in range(20) if n % 4)
        assert answers == {n: 409 if n % 4 == 0 else 201 for n in range(20)}
        items = await pool.fetch("SELECT name FROM load_items WHERE name LIKE $1", f"{tag}-%")
        assert sorted(r["name"] for r in items) == committed
        runs = await pool.fetch("SELECT name FROM load_postcommits WHERE name LIKE $1", f"{tag}-%")
        assert sorted(r["name"] for r in runs) == committed  # once per committed request


async def last_state_changes(observer: asyncpg.Pool, application_name: str) -> dict[int, Any]:
    """When each backend of ``application_name`` last changed state, by pid: any statement
    (BEGIN, the pool's reset on release) changes it, and pg_stat_activity shows it at once
    (the cumulative statistics, xact_commit..., are flushed up to a second late)."""
    rows = await observer.fetch(
        "SELECT pid, state_change FROM pg_stat_activity WHERE application_name = $1",
        application_name,
    )
    return {r["pid"]: r["state_change"] for r in rows}


async def test_a_request_that_never_touches_the_database_costs_it_nothing(
    dsn: str, pool: asyncpg.Pool
) -> None:
    name = f"untouched-{secrets.token_hex(3)}"
    acquisitions: list[int] = []

    async def count(conn: asyncpg.Connection) -> None:
        acquisitions.append(conn.get_server_pid())

    async with asyncpg.create_pool(
        dsn, min_size=2, max_size=2, setup=count, server_settings={"application_name": name}
    ) as watched:
        before = await last_state_changes(pool, name)
        assert len(before) == 2  # both connections opened up front, idle

        async def app(scope: Any, receive: Any, send: Any) -> None:
            current_transaction()  # inside its scope, it answers without the database
            await JSONResponse({"ok": True})(scope, receive, send)

        middleware = TransactionMiddleware(app, lambda: hookbus_asyncpg.transaction(watched))
        for _ in range(5):
            assert (await call(middleware, [BODY], method="GET"))[0]["status"] == 200
        assert acquisitions == []  # no pool acquisition
        assert await last_state_changes(pool, name) == before  # no statement reached it

        # The probe sees a request that does use the database.
        async def writing(scope: Any, receive: Any, send: Any) -> None:
            await current_transaction().connection.fetchval("SELECT 1")  # type: ignore[attr-defined]
            await JSONResponse({"ok": True})(scope, receive, send)

        await call(
            TransactionMiddleware(writing, lambda: hookbus_asyncpg.transaction(watched)), [BODY]
        )
        assert len(acquisitions) == 1
        assert await last_state_changes(pool, name) != before
