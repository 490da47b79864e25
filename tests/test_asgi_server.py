"""The web stack under a real server: uvicorn in a subprocess with ``--lifespan on``."""

from __future__ import annotations

import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import asyncpg
import httpx
import pytest_asyncio
from _uvicorn import Uvicorn, uvicorn

TESTS = Path(__file__).resolve().parent
APP = "--factory _web_app:create_app"


@pytest_asyncio.fixture
async def served_app(dsn: str) -> AsyncIterator[Uvicorn]:
    """tests/_web_app.py served by uvicorn, listening."""
    async with uvicorn(APP, cwd=TESTS, env={"HOOKBUS_WEB_DSN": dsn}) as server:
        await server.wait_listening()
        yield server


@pytest_asyncio.fixture
async def client(served_app: Uvicorn) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(base_url=served_app.url, limits=limits, timeout=30) as client:
        yield client


async def lifecycle(pool: asyncpg.Pool, pid: int) -> list[str]:
    rows = await pool.fetch("SELECT event FROM lifecycle WHERE pid = $1 ORDER BY ctid", pid)
    return [r["event"] for r in rows]


async def test_100_concurrent_requests_each_in_its_own_scope(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    answers: dict[int, object] = {}

    async def one(n: int) -> None:
        response = await client.get(f"/scope/{n}")
        assert response.status_code == 200, response.text
        answers[n] = response.json()

    async with anyio.create_task_group() as tg:
        for n in range(100):
            tg.start_soon(one, n)
    assert answers == {n: {"n": n, "data": {"n": n}, "ops": [f"scope-{n}"]} for n in range(100)}


async def test_commit_failures_and_rollbacks_under_a_real_server(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    tag = secrets.token_hex(3)
    ok, deferred, invalid, refused, raised = (f"{kind}-{tag}" for kind in "ABCDE")
    assert (await client.post("/items", json={"name": ok})).status_code == 200
    response = await client.post("/deferred", json={"name": deferred})
    assert (response.status_code, response.json()["sqlstate"]) == (409, "23503")
    response = await client.post("/items", json={"name": invalid, "invalid": True})
    assert (response.status_code, response.json()["errors"]) == (
        422,
        {"name": f"{invalid} is refused"},
    )
    assert (await client.post("/items", json={"name": refused, "status": 404})).status_code == 404
    assert (await client.post("/items", json={"name": raised, "raise": True})).status_code == 500
    stored = await pool.fetch("SELECT name FROM items WHERE name LIKE $1", f"%-{tag}")
    assert [r["name"] for r in stored] == [ok]
    # postcommit ran once, for the committed request only
    done = await pool.fetch("SELECT name FROM postcommits WHERE name LIKE $1", f"%-{tag}")
    assert [r["name"] for r in done] == [ok]


async def test_shutdown_hooks_run_on_sigterm(served_app: Uvicorn, pool: asyncpg.Pool) -> None:
    server = served_app
    pid = server.process.pid
    assert await lifecycle(pool, pid) == ["startup"]
    server.terminate()
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert await server.wait_exit() in (0, -signal.SIGTERM), server.output
    assert await lifecycle(pool, pid) == ["startup", "shutdown"]
    assert "Application shutdown complete" in server.output


async def test_a_failing_startup_hook_makes_uvicorn_exit_without_serving(
    dsn: str, pool: asyncpg.Pool
) -> None:
    env = {"HOOKBUS_WEB_DSN": dsn, "HOOKBUS_WEB_FAIL_STARTUP": "1"}
    async with uvicorn(APP, cwd=TESTS, env=env) as server:
        code = await server.wait_exit()
    assert code != 0, server.output
    assert "the startup hook fails on purpose" in server.output
    assert "Application startup failed" in server.output
    assert "Uvicorn running on" not in server.output
    # the startup hook ran, failed, and the shutdown hooks still ran
    assert await lifecycle(pool, server.process.pid) == ["startup", "shutdown"]
