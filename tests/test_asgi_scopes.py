"""What opens a request's scope: a factory of any backend; an asyncpg pool, deprecated."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import hookbus_asyncpg
import pytest
from _asgi import call
from hookbus_asgi import TransactionMiddleware, asyncpg_transactions
from hookbus_asgi import fastapi as hb_fastapi
from hookbus_asgi.litestar import HookbusPlugin
from starlette.responses import JSONResponse

import hookbus
from hookbus import Bus, Operation, Transaction, current_transaction

ROOT = Path(__file__).resolve().parent.parent
DEPRECATED = r".*given an asyncpg pool \(or a function returning one\) is deprecated"
# A form that is not deprecated must not warn: the deprecation warning is an error here.
pytestmark = pytest.mark.filterwarnings(f"error:{DEPRECATED}:DeprecationWarning")


class Record(Operation):
    def __init__(self, log: list[str], name: str) -> None:
        super().__init__()
        self.log, self.name = log, name

    async def postcommit(self) -> None:
        self.log.append(f"postcommit {self.name}")

    async def rollback(self) -> None:
        self.log.append(f"rollback {self.name}")


def scheduling_app(log: list[str], status: int = 200) -> Any:
    """An ASGI application scheduling an operation in the request's scope, then answering."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        current_transaction().add(Record(log, scope["path"]))
        await JSONResponse({}, status_code=status)(scope, receive, send)

    return app


async def test_a_factory_of_another_backend_opens_each_requests_scope() -> None:
    log: list[str] = []
    opened: list[Transaction] = []

    @contextlib.asynccontextmanager
    async def memory_scope() -> AsyncIterator[Transaction]:
        async with hookbus.transaction() as tx:  # the in-memory backend: no database at all
            opened.append(tx)
            yield tx

    middleware = TransactionMiddleware(scheduling_app(log), memory_scope)
    assert (await call(middleware, [], path="/a"))[0]["status"] == 200
    assert (await call(TransactionMiddleware(scheduling_app(log, 404), memory_scope), []))[0][
        "status"
    ] == 404
    assert log == ["postcommit /a", "rollback /"]
    assert len(opened) == 2 and opened[0] is not opened[1]


async def test_a_lambda_opening_an_asyncpg_transaction(pool: asyncpg.Pool) -> None:
    await pool.execute("CREATE TABLE IF NOT EXISTS scoped (name text)")
    name = secrets.token_hex(4)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        tx = current_transaction()
        assert isinstance(tx, hookbus_asyncpg.AsyncpgTransaction)
        await tx.connection.execute("INSERT INTO scoped VALUES ($1)", name)
        await JSONResponse({})(scope, receive, send)

    await call(TransactionMiddleware(app, lambda: hookbus_asyncpg.transaction(pool)), [])
    await call(TransactionMiddleware(app, asyncpg_transactions(lambda: pool)), [])
    assert await pool.fetchval("SELECT count(*) FROM scoped WHERE name = $1", name) == 2


async def test_what_a_factory_gives_is_checked_at_the_first_request() -> None:
    log: list[str] = []
    middleware = TransactionMiddleware(scheduling_app(log), lambda: "not a scope")
    with pytest.raises(TypeError, match="returned 'not a scope', not an async context manager"):
        await call(middleware, [])

    @contextlib.asynccontextmanager
    async def not_a_transaction() -> AsyncIterator[object]:
        yield "a connection, say"

    middleware = TransactionMiddleware(scheduling_app(log), not_a_transaction)
    with pytest.raises(TypeError, match=r"yielded 'a connection, say', not a hookbus\.Transaction"):
        await call(middleware, [])
    assert log == []


def test_what_cannot_open_a_scope_is_refused_when_the_app_is_built() -> None:
    app = scheduling_app([])
    with pytest.raises(TypeError, match="needs what opens a scope"):
        TransactionMiddleware(app)
    with pytest.raises(TypeError, match="not str"):
        TransactionMiddleware(app, "postgresql://")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="isolation"):
        asyncpg_transactions(lambda: None, isolation="snapshot")  # type: ignore[arg-type, return-value]
    with pytest.raises(ValueError, match="outcome_timeout"):
        asyncpg_transactions(lambda: None, outcome_timeout=0)  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match=r"asyncpg\.Pool or a function"):
        asyncpg_transactions("postgresql://")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="isolation"):
        hb_fastapi.transaction(asyncpg_transactions(lambda: None, isolation="dirty"))  # type: ignore[arg-type, return-value]
    with pytest.raises(ValueError, match="what opens a scope"):
        HookbusPlugin(Bus())


# -- the deprecated forms: a pool, a function returning one, pool=, the asyncpg options ------


@pytest.mark.filterwarnings("default")
async def test_a_pool_still_works_with_a_warning_saying_what_to_write(pool: asyncpg.Pool) -> None:
    log: list[str] = []
    with pytest.warns(DeprecationWarning, match=DEPRECATED) as caught:
        middleware = TransactionMiddleware(scheduling_app(log), pool)
    assert "lambda: hookbus_asyncpg.transaction(pool)" in str(caught[0].message)
    assert caught[0].filename == __file__  # it points at the caller's line
    with pytest.warns(DeprecationWarning, match=DEPRECATED):
        keyword = TransactionMiddleware(scheduling_app(log), pool=pool)
    await call(middleware, [], path="/positional")
    await call(keyword, [], path="/keyword")
    assert log == ["postcommit /positional", "postcommit /keyword"]


@pytest.mark.filterwarnings("default")
async def test_a_function_returning_a_pool_warns_at_its_first_request(pool: asyncpg.Pool) -> None:
    log: list[str] = []
    middleware = TransactionMiddleware(scheduling_app(log), lambda: pool)  # no warning yet
    with pytest.warns(DeprecationWarning, match=DEPRECATED):
        await call(middleware, [], path="/first")
    await call(middleware, [], path="/second")  # the decision was kept: no second warning
    assert log == ["postcommit /first", "postcommit /second"]


@pytest.mark.filterwarnings("default")
async def test_the_deprecated_options_are_still_passed_and_checked_at_build(
    pool: asyncpg.Pool,
) -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        tx = current_transaction()
        assert isinstance(tx, hookbus_asyncpg.AsyncpgTransaction)
        seen.append(await tx.connection.fetchval("SHOW transaction_isolation"))
        await JSONResponse({})(scope, receive, send)

    with pytest.warns(DeprecationWarning, match=r"isolation='serializable'"):
        middleware = TransactionMiddleware(app, lambda: pool, isolation="serializable")
    await call(middleware, [])
    assert seen == ["serializable"]
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="isolation"):
        TransactionMiddleware(app, lambda: pool, isolation="snapshot")  # type: ignore[arg-type]
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="isolation"):
        hb_fastapi.transaction(lambda: pool, isolation="snapshot")  # type: ignore[arg-type]
    with pytest.warns(DeprecationWarning):
        HookbusPlugin(Bus(), pool)


def test_importing_hookbus_asgi_and_using_another_backend_loads_no_asyncpg() -> None:
    code = (
        "import sys, hookbus, hookbus_asgi, hookbus_asgi.fastapi, hookbus_asgi.litestar\n"
        "async def app(scope, receive, send): pass\n"
        "hookbus_asgi.TransactionMiddleware(app, hookbus.transaction)\n"
        "hookbus_asgi.fastapi.transaction(hookbus.transaction)\n"
        "hookbus_asgi.litestar.HookbusPlugin(hookbus.Bus(), hookbus.transaction)\n"
        "print(sorted(m for m in ('asyncpg', 'hookbus_asyncpg') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT / "adapters",
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"
