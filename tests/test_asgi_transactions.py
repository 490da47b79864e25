"""A transaction scope per request (hookbus_asgi.TransactionMiddleware), in process."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import asyncpg
import hookbus_asyncpg
import httpx
import pytest
import pytest_asyncio
from _asgi import call, served
from _postgres import gate_at_commit, wait_until_blocked_on_lock
from _web_app import create_app
from hookbus_asgi import ErrorResponse, TransactionMiddleware, error_response
from starlette.responses import JSONResponse, StreamingResponse

import hookbus
from hookbus import (
    CommitOutcomeUnknownError,
    Operation,
    TransactionAbortedError,
    ValidationError,
    current_transaction,
)


@pytest_asyncio.fixture
async def client(dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the test application (tests/_web_app.py), its lifespan running."""
    async with served(create_app(dsn)) as client:
        yield client


def scopes(pool: asyncpg.Pool) -> Callable[[], Any]:
    """What opens each request's scope: a hookbus_asyncpg transaction on ``pool``."""
    return lambda: hookbus_asyncpg.transaction(pool)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def rows(pool: asyncpg.Pool, table: str, name: str) -> int:
    count = await pool.fetchval(f"SELECT count(*) FROM {table} WHERE name = $1", name)
    assert isinstance(count, int)
    return count


async def test_a_2xx_commits_before_the_response_and_postcommit_runs_once(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    name = unique("ok")
    response = await client.post("/items", json={"name": name, "status": 201})
    assert response.status_code == 201
    # Both are visible as soon as the response is: the scope ended before it started.
    assert await rows(pool, "items", name) == 1
    assert await rows(pool, "postcommits", name) == 1


@pytest.mark.parametrize("status", [400, 404, 409, 500])
async def test_a_handler_returning_4xx_or_5xx_rolls_back(
    client: httpx.AsyncClient, pool: asyncpg.Pool, status: int
) -> None:
    name = unique("refused")
    response = await client.post("/items", json={"name": name, "status": status})
    assert response.status_code == status
    assert response.json() == {"name": name}  # the handler's own answer goes out
    assert await rows(pool, "items", name) == 0
    assert await rows(pool, "postcommits", name) == 0


async def test_an_exception_in_the_handler_rolls_back_and_answers_500(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    name = unique("raised")
    response = await client.post("/items", json={"name": name, "raise": True})
    assert response.status_code == 500
    assert await rows(pool, "items", name) == 0
    assert await rows(pool, "postcommits", name) == 0


async def test_a_validation_error_is_answered_422_with_its_json(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    name = unique("invalid")
    response = await client.post("/items", json={"name": name, "invalid": True})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"eid": None, "errors": {"name": f"{name} is refused"}}
    assert await rows(pool, "items", name) == 0


async def test_a_deferred_constraint_failing_at_commit_is_an_error_and_the_row_is_absent(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    name = unique("deferred")
    response = await client.post("/deferred", json={"name": name})
    # The handler answered 200; the FK checked at COMMIT failed: the client must not see 2xx.
    assert response.status_code == 409
    assert response.json()["sqlstate"] == "23503"
    assert await rows(pool, "items", name) == 0
    assert await rows(pool, "children", name) == 0
    assert await rows(pool, "postcommits", name) == 0


async def test_100_concurrent_requests_each_see_only_their_own_scope(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    answers: dict[int, Any] = {}

    async def one(n: int) -> None:
        response = await client.get(f"/scope/{n}")
        assert response.status_code == 200
        answers[n] = response.json()

    async with anyio.create_task_group() as tg:
        for n in range(100):
            tg.start_soon(one, n)
    for n in range(100):
        assert answers[n] == {"n": n, "data": {"n": n}, "ops": [f"scope-{n}"]}
    names = await pool.fetch("SELECT name FROM postcommits WHERE name LIKE 'scope-%'")
    assert sorted(r["name"] for r in names) == sorted(f"scope-{n}" for n in range(100))


async def test_a_streamed_response_commits_before_it_starts(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    name = unique("stream")
    response = await client.post("/stream", json={"name": name})
    assert response.status_code == 200
    assert response.text == "one two three"
    assert await rows(pool, "items", name) == 1
    assert await rows(pool, "postcommits", name) == 1


async def test_a_streamed_error_response_rolls_back(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    name = unique("stream-refused")
    response = await client.post("/stream", json={"name": name, "status": 400})
    assert response.status_code == 400
    assert response.text == "one two three"
    assert await rows(pool, "items", name) == 0


async def test_session_events_surround_each_request(client: httpx.AsyncClient) -> None:
    await client.post("/items", json={"name": unique("session")})
    sessions = (await client.get("/sessions")).json()
    assert sessions[-3:] == [
        ["session_open", "/items"],
        ["session_close", "/items"],
        ["session_open", "/sessions"],
    ]


# -- the middleware alone, around small ASGI applications ------------------------------------


async def _setup(pool: asyncpg.Pool) -> None:
    await pool.execute("CREATE TABLE IF NOT EXISTS notes (name text)")


def inserting_app(status: int = 200, *, read_body: bool = True) -> Any:
    """An ASGI application that inserts a note named by the request body, then answers."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        if read_body:
            message = await receive()
            body = message.get("body", b"")
        await current_transaction().connection.execute(  # type: ignore[attr-defined]
            "INSERT INTO notes VALUES ($1)", body.decode()
        )
        while (await receive())["type"] != "http.disconnect":
            pass  # the client went away before the response
        response = JSONResponse({"status": status}, status_code=status)
        await response(scope, receive, send)

    return app


async def test_a_client_that_disconnects_mid_request_rolls_back(pool: asyncpg.Pool) -> None:
    await _setup(pool)
    name = unique("gone")
    app = TransactionMiddleware(inserting_app(), scopes(pool))
    body = {"type": "http.request", "body": name.encode(), "more_body": False}
    await call(app, [body, {"type": "http.disconnect"}])
    assert await rows(pool, "notes", name) == 0


async def test_commit_on_decides_from_the_status(pool: asyncpg.Pool) -> None:
    await _setup(pool)

    async def answer(status: int, name: str) -> None:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            await current_transaction().connection.execute(  # type: ignore[attr-defined]
                "INSERT INTO notes VALUES ($1)", name
            )
            await JSONResponse({}, status_code=status)(scope, receive, send)

        sent = await call(
            TransactionMiddleware(app, scopes(pool), commit_on=lambda s: s != 201), []
        )
        assert sent[0]["status"] == status

    await answer(404, kept := unique("kept"))
    await answer(201, dropped := unique("dropped"))
    assert await rows(pool, "notes", kept) == 1
    assert await rows(pool, "notes", dropped) == 0


async def test_an_application_returning_without_a_response_rolls_back(pool: asyncpg.Pool) -> None:
    await _setup(pool)
    name = unique("silent")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await current_transaction().connection.execute(  # type: ignore[attr-defined]
            "INSERT INTO notes VALUES ($1)", name
        )

    assert await call(TransactionMiddleware(app, scopes(pool)), []) == []
    assert await rows(pool, "notes", name) == 0


class _FailsAtPrecommit(Operation):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def precommit(self) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "status", "words"),
    [
        (CommitOutcomeUnknownError("lost during COMMIT"), 503, "outcome of the transaction is"),
        (TransactionAbortedError("aborted"), 500, "nothing was committed"),
        (LookupError("an unmapped error"), 500, "could not be committed"),
    ],
)
async def test_a_failed_end_of_scope_replaces_the_2xx(
    pool: asyncpg.Pool, error: Exception, status: int, words: str
) -> None:
    await _setup(pool)
    name = unique("replaced")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        tx = current_transaction()
        await tx.connection.execute("INSERT INTO notes VALUES ($1)", name)  # type: ignore[attr-defined]
        tx.add(_FailsAtPrecommit(error))
        await JSONResponse({"ok": True})(scope, receive, send)

    sent = await call(TransactionMiddleware(app, scopes(pool)), [])
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == status
    assert words in sent[1]["body"].decode()
    assert await rows(pool, "notes", name) == 0


FLAKY = """
CREATE TABLE IF NOT EXISTS flaky (name text);
CREATE SEQUENCE IF NOT EXISTS flaky_commits;
CREATE OR REPLACE FUNCTION fail_first_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- a sequence is not rolled back: only the first COMMIT fails
    IF nextval('flaky_commits') = 1 THEN
        RAISE EXCEPTION 'could not serialize access' USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS fail_first_commit ON flaky;
CREATE CONSTRAINT TRIGGER fail_first_commit AFTER INSERT ON flaky
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_first_commit();
"""


async def _flaky(pool: asyncpg.Pool) -> None:
    await pool.execute(FLAKY)
    await pool.execute("TRUNCATE flaky; ALTER SEQUENCE flaky_commits RESTART")


def flaky_app() -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        conn = current_transaction().connection  # type: ignore[attr-defined]
        if body.startswith(b"now:"):  # the trigger fires at the INSERT: the endpoint raises
            await conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        await conn.execute("INSERT INTO flaky VALUES ($1)", body.decode())
        await JSONResponse({"name": body.decode()})(scope, receive, send)

    return app


@pytest.mark.parametrize("when", ["", "now:"], ids=["at COMMIT", "raised by the endpoint"])
async def test_a_serialization_failure_is_409_without_retries(
    pool: asyncpg.Pool, when: str
) -> None:
    await _flaky(pool)
    body = [{"type": "http.request", "body": f"{when}once".encode(), "more_body": False}]
    sent = await call(TransactionMiddleware(flaky_app(), scopes(pool)), body)
    assert sent[0]["status"] == 409
    assert b"40001" in sent[1]["body"]
    assert await pool.fetchval("SELECT count(*) FROM flaky") == 0


@pytest.mark.parametrize("when", ["", "now:"], ids=["at COMMIT", "raised by the endpoint"])
async def test_retries_rerun_the_request_with_its_body_replayed(
    pool: asyncpg.Pool, when: str
) -> None:
    await _flaky(pool)
    body = [
        {"type": "http.request", "body": f"{when}in ".encode(), "more_body": True},
        {"type": "http.request", "body": b"two parts", "more_body": False},
    ]
    sent = await call(TransactionMiddleware(flaky_app(), scopes(pool), retries=2), body)
    assert sent[0]["status"] == 200
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert await pool.fetch("SELECT name FROM flaky") == [(f"{when}in two parts",)]
    assert await pool.fetchval("SELECT last_value FROM flaky_commits") == 2  # two attempts


async def test_no_retry_when_the_body_is_too_large_to_replay(pool: asyncpg.Pool) -> None:
    await _flaky(pool)
    body = [{"type": "http.request", "body": b"x" * 100, "more_body": False}]
    sent = await call(
        TransactionMiddleware(flaky_app(), scopes(pool), retries=2, replay_limit=10), body
    )
    assert sent[0]["status"] == 409
    assert await pool.fetchval("SELECT count(*) FROM flaky") == 0


def test_bad_options_are_refused_when_the_middleware_is_built() -> None:
    factory = hookbus.transaction
    with pytest.raises(ValueError, match="retries"):
        TransactionMiddleware(inserting_app(), factory, retries=-1)
    with pytest.raises(ValueError, match="replay_limit"):
        TransactionMiddleware(inserting_app(), factory, replay_limit=-1)
    with pytest.raises(TypeError, match="commit_on"):
        TransactionMiddleware(inserting_app(), factory, commit_on=200)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="errors"):
        TransactionMiddleware(inserting_app(), factory, errors=None)  # type: ignore[arg-type]


def test_the_default_error_answers() -> None:
    assert error_response(ValidationError(7, {"age": "too old"})) == ErrorResponse(
        422, b'{"eid":7,"errors":{"age":"too old"}}'
    )
    unknown = error_response(CommitOutcomeUnknownError("lost"))
    assert unknown is not None and unknown.status == 503
    assert b"unknown" in unknown.body
    assert error_response(asyncpg.DeadlockDetectedError("deadlock")) == ErrorResponse.json(
        409,
        {
            "detail": "the transaction conflicted with a concurrent one and was rolled back; "
            "nothing was committed: retry the request",
            "sqlstate": "40P01",
        },
    )
    assert error_response(RuntimeError("anything else")) is None


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_the_row_is_committed_before_the_response_starts(
    pool: asyncpg.Pool, spec_version: str
) -> None:
    """Under ASGI 2.4 Starlette streams from the request's task: the scope ends at the start;
    under 2.3 from a child task: the response is held until the application returns."""
    await _setup(pool)
    name = unique(f"streamed-{spec_version}")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await current_transaction().connection.execute(  # type: ignore[attr-defined]
            "INSERT INTO notes VALUES ($1)", name
        )

        async def chunks() -> AsyncIterator[bytes]:
            yield b"a"
            yield b"b"

        await StreamingResponse(chunks())(scope, receive, send)

    seen: list[tuple[str, int]] = []

    async def send(message: Any) -> None:
        seen.append((message["type"], await rows(pool, "notes", name)))

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": spec_version}}
    await TransactionMiddleware(app, scopes(pool))(scope, _quiet_client(), send)
    # every message, the start included, went out once the row was committed
    assert seen == [
        ("http.response.start", 1),
        ("http.response.body", 1),
        ("http.response.body", 1),
        ("http.response.body", 1),
    ]


def _quiet_client() -> Any:
    """A receive channel: an empty body, then nothing (the client stays connected)."""
    calls = 0

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    return receive


GATE = 4343  # the advisory lock a deferred trigger of ``gated_notes`` waits for at COMMIT
GATED = f"""
CREATE TABLE IF NOT EXISTS gated_notes (name text);
{gate_at_commit("gated_notes", GATE)}
"""


async def test_a_connection_lost_during_commit_is_never_answered_2xx(pool: asyncpg.Pool) -> None:
    await pool.execute(GATED)
    name = unique("lost")
    pids: list[int] = []
    committing = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        conn = current_transaction().connection  # type: ignore[attr-defined]
        await conn.execute("INSERT INTO gated_notes VALUES ($1)", name)
        pids.append(conn.get_server_pid())
        committing.set()
        await JSONResponse({"ok": True})(scope, receive, send)  # COMMIT waits on the gate

    sent: list[dict[str, Any]] = []
    async with pool.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", GATE)
        try:
            async with anyio.create_task_group() as tg:

                async def request() -> None:
                    sent.extend(await call(TransactionMiddleware(app, scopes(pool)), []))

                tg.start_soon(request)
                with anyio.fail_after(10):
                    await committing.wait()
                await wait_until_blocked_on_lock(pool, pids[0])
                await holder.execute("SELECT pg_terminate_backend($1)", pids[0])
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", GATE)
    # PostgreSQL, asked on another connection, says the transaction was rolled back
    assert sent[0]["status"] == 500
    assert b"nothing was committed" in sent[1]["body"]
    assert await pool.fetchval("SELECT count(*) FROM gated_notes WHERE name = $1", name) == 0
