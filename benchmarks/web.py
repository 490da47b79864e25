"""Web benchmark: a request that never touches the database, through hookbus_asgi vs bare.

Run from the repository root::

    .venv/bin/python benchmarks/web.py              # about 20 s
    .venv/bin/python benchmarks/web.py --quick      # smoke run, a few seconds
    .venv/bin/python benchmarks/web.py --dsn postgresql://postgres@127.0.0.1:5432/postgres

One request, in process (no HTTP: the ASGI call itself, a scope, a receive giving an empty
body, a send that keeps nothing), to a Starlette route that answers ``{"ok": true}`` without
any database use. The floor is the same Starlette application without hookbus; each subject
is that application with:

``own``      ``TransactionMiddleware`` opening a scope that costs nothing (a context manager
             yielding one ``hookbus.Transaction`` it never enters): the middleware's own
             cost (the task reading ``receive`` for a client that leaves, the cancel scope,
             the response start held until the scope ends).
``memory``   ``TransactionMiddleware`` opening ``hookbus.transaction()`` (the in-memory
             backend): the middleware and a scope that does nothing.
``asyncpg``  ``TransactionMiddleware`` opening ``hookbus_asyncpg.transaction(pool)``: what a
             back end pays per request that never uses the database. A scope that begins
             lazily takes no connection and sends no statement; one that begins eagerly pays
             a pool acquisition, BEGIN and COMMIT, which this figure shows.
``stack``    the asyncpg case inside ``SessionMiddleware`` and ``LifespanMiddleware`` (the
             whole of hookbus_asgi; no session hook registered).

Every figure is a ratio: each sample is paired with a floor sample taken right beside it, in
the same round of the same process, the order flipped every round; the table shows the
median of those ratios and their quartiles (see ``_timing.py``). The database is a
throwaway one on the server (``--dsn``, else ``HOOKBUS_DSN``'s rule), dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import asyncpg
import hookbus_asyncpg
from hookbus_asgi import LifespanMiddleware, SessionMiddleware, TransactionMiddleware
from hookbus_asyncpg.testing import run_with_database
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: measure the working tree's hookbus
    sys.path.insert(0, str(ROOT))

import hookbus  # noqa: E402
from benchmarks._timing import Pair, Subject, run_pairs  # noqa: E402

SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.4"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/ok",
    "raw_path": b"/ok",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"bench")],
    "client": ("127.0.0.1", 1),
    "server": ("127.0.0.1", 80),
    "state": {},
}
BODY: dict[str, Any] = {"type": "http.request", "body": b"", "more_body": False}


async def request(app: Any) -> None:
    """One GET /ok through ``app``; the client stays connected (as a server's receive, a
    second call waits until the request is over: the listener's task is cancelled there)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return BODY
        await asyncio.get_running_loop().create_future()  # as uvicorn waits on an event
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        pass

    await app(dict(SCOPE), receive, send)


def starlette() -> Starlette:
    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/ok", ok)])


class NoScope:
    """A scope factory's context manager that costs nothing: it yields one transaction it
    never enters (the application does not use it)."""

    transaction = hookbus.transaction()

    def __call__(self) -> NoScope:
        return self

    async def __aenter__(self) -> hookbus.Transaction:
        return self.transaction

    async def __aexit__(self, *exc: object) -> None:
        return None


def with_middleware(factory: Any) -> Starlette:
    app = starlette()
    app.add_middleware(TransactionMiddleware, transaction=factory)
    return app


async def measure(dsn: str, args: argparse.Namespace) -> None:
    async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool:
        bus = hookbus.Bus()
        on_pool = with_middleware(lambda: hookbus_asyncpg.transaction(pool))
        subjects = {
            "own": with_middleware(NoScope()),
            "memory": with_middleware(hookbus.transaction),
            "asyncpg": on_pool,
            "stack": LifespanMiddleware(SessionMiddleware(on_pool, bus), bus),
        }
        floor = Subject("bare", request, (starlette(),))
        pairs = [
            Pair("no-database request", Subject(name, request, (app,)), floor)
            for name, app in subjects.items()
        ]
        await run_pairs(pairs, args.rounds, args.sample_ms * 1e6, max_iterations=20_000)
    print(f"{'subject':<10} {'bare us':>8} {'hookbus us':>11} {'ratio':>7} {'quartiles':>13}")
    for pair in pairs:
        floor_us = sorted(pair.floor_ns)[len(pair.floor_ns) // 2] / 1e3
        subject_us = sorted(pair.subject_ns)[len(pair.subject_ns) // 2] / 1e3
        low, high = pair.spread
        print(
            f"{pair.subject.name:<10} {floor_us:>8.1f} {subject_us:>11.1f} "
            f"{pair.ratio:>7.2f} {low:>6.2f}-{high:<6.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="the PostgreSQL server (default: HOOKBUS_DSN's rule)")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--sample-ms", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="5 short rounds: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.sample_ms = 5, 10.0
    run_with_database(lambda dsn: measure(dsn, args), "bench_web", dsn=args.dsn)


if __name__ == "__main__":
    main()
