"""Which PostgreSQL the tests, the examples and the benchmarks use: one rule, one line when it
cannot be followed (hookbus_asyncpg.testing)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from hookbus_asyncpg.testing import (
    ServerUnavailableError,
    choose_server,
    default_dsn,
    throwaway_database,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound, never listening, for the test's length)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HOOKBUS_DSN", "HOOKBUS_TEST_DSN", "PGHOST", "PGPORT", "PGUSER"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def env_without(*names: str, **extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in names}, **extra}


# A quick test module, run by pytest in a process of its own.
PYTEST_SELECTORS = ("-m", "pytest", "-p", "no:cacheprovider", "tests/test_selectors.py")


def python(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` in the project's folder with ``env``; its output as text."""
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60
    )


def test_an_explicit_dsn_that_does_not_answer_is_an_error_in_one_line(
    clean_env: pytest.MonkeyPatch, dead_port: int
) -> None:
    clean_env.setenv("HOOKBUS_DSN", f"postgresql://app:secret@127.0.0.1:{dead_port}/db")
    with pytest.raises(ServerUnavailableError) as caught:
        choose_server()
    assert str(caught.value) == (
        f"HOOKBUS_DSN=postgresql://app:***@127.0.0.1:{dead_port}/db does not answer "
        "(connection refused); unset HOOKBUS_DSN to use the local PostgreSQL or else an "
        "embedded one, or use HOOKBUS_DSN=embedded"
    )


def test_the_first_variable_set_decides_and_must_answer(
    clean_env: pytest.MonkeyPatch, dead_port: int, server: str
) -> None:
    clean_env.setenv("HOOKBUS_DSN", server)
    clean_env.setenv("HOOKBUS_TEST_DSN", f"postgresql://postgres@127.0.0.1:{dead_port}/test")
    with pytest.raises(ServerUnavailableError, match=r"^HOOKBUS_TEST_DSN=.* does not answer"):
        choose_server(("HOOKBUS_TEST_DSN", "HOOKBUS_DSN"))
    clean_env.delenv("HOOKBUS_TEST_DSN")
    choice = choose_server(("HOOKBUS_TEST_DSN", "HOOKBUS_DSN"))
    assert (choice.dsn, choice.origin) == (server, "HOOKBUS_DSN")
    assert choice.describe().startswith(f"{server} (HOOKBUS_DSN; PostgreSQL ")


def test_a_dsn_given_as_an_option_comes_first(
    clean_env: pytest.MonkeyPatch, dead_port: int, server: str
) -> None:
    clean_env.setenv("HOOKBUS_DSN", server)
    dead = f"postgresql://postgres@127.0.0.1:{dead_port}/x"
    with pytest.raises(ServerUnavailableError, match=r"^--dsn=.*; leave out --dsn to use"):
        choose_server(dsn=dead)


def test_only_the_default_falls_back_to_the_embedded_server(
    clean_env: pytest.MonkeyPatch, dead_port: int
) -> None:
    clean_env.setenv("PGPORT", str(dead_port))
    assert default_dsn() == f"postgresql://postgres@127.0.0.1:{dead_port}/postgres"
    choice = choose_server()
    assert choice.dsn is None
    assert choice.describe() == (
        "an embedded PostgreSQL (the default: HOOKBUS_DSN unset; nothing answers at "
        f"postgresql://postgres@127.0.0.1:{dead_port}/postgres: connection refused)"
    )


def test_commands_whose_work_must_last_refuse_the_fallback(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ServerUnavailableError, match=r"^HOOKBUS_DSN unset: name the PostgreSQL"):
        choose_server(fallback=False)
    clean_env.setenv("HOOKBUS_DSN", "embedded")
    with pytest.raises(ServerUnavailableError, match=r"^HOOKBUS_DSN=embedded: this work must"):
        choose_server(fallback=False)


def test_the_embedded_server_starts_takes_a_throwaway_database_and_stops(
    clean_env: pytest.MonkeyPatch, dead_port: int
) -> None:
    clean_env.setenv("HOOKBUS_DSN", "embedded")
    clean_env.setenv("PGPORT", str(dead_port))  # the server listens there: its DSN says so
    choice = choose_server()
    assert (choice.dsn, choice.origin) == (None, "HOOKBUS_DSN=embedded")

    async def use(server_dsn: str) -> tuple[str, int]:
        async with throwaway_database(server_dsn, "tests.test_servers") as dsn:
            conn = await asyncpg.connect(dsn)
            try:
                database = await conn.fetchval("SELECT current_database()")
                return database, conn.get_server_version().major
            finally:
                await conn.close()

    with choice.start() as server_dsn:
        clean_env.delenv("PGPORT")
        database, version = asyncio.run(use(server_dsn))
        assert database.startswith("hookbus_test_servers_")
        assert version == 18
    socket_dir = Path(parse_qs(urlsplit(server_dsn).query)["host"][0])
    assert not socket_dir.exists(), "the server stopped and its directory is gone"


def test_pytest_stops_at_once_on_a_dead_test_dsn(dead_port: int) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{dead_port}/test"
    out = python(*PYTEST_SELECTORS, env=env_without("HOOKBUS_DSN", HOOKBUS_TEST_DSN=dead))
    assert out.returncode == pytest.ExitCode.USAGE_ERROR
    assert out.stderr.strip().splitlines() == [
        f"ERROR: HOOKBUS_TEST_DSN={dead} does not answer (connection refused); unset "
        "HOOKBUS_TEST_DSN to use the local PostgreSQL or else an embedded one, or use "
        "HOOKBUS_TEST_DSN=embedded"
    ]


def test_the_pytest_header_names_the_server(server: str) -> None:
    out = python(*PYTEST_SELECTORS, env=env_without("HOOKBUS_DSN", HOOKBUS_TEST_DSN=server))
    assert out.returncode == 0, out.stdout
    assert f"PostgreSQL: {server} (HOOKBUS_TEST_DSN; PostgreSQL " in out.stdout


def test_an_example_on_a_dead_hookbus_dsn_says_so_in_one_line(dead_port: int) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{dead_port}/test"
    out = python("examples/person_age.py", env=env_without("PYTHONPATH", HOOKBUS_DSN=dead))
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == (
        f"hookbus: HOOKBUS_DSN={dead} does not answer (connection refused); unset HOOKBUS_DSN "
        "to use the local PostgreSQL or else an embedded one, or use HOOKBUS_DSN=embedded\n"
    )
