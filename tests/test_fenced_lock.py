"""The fenced lock: one holder per name, tokens that grow, fences that refuse a lost holder."""

from __future__ import annotations

import asyncio

import asyncpg
import hookbus_asyncpg
import pytest
from _postgres import wait_until_blocked_on_lock
from hookbus_asyncpg import FencedLock, LockLostError, LockTimeoutError

from hookbus import HookbusError


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A lock name of this test's own: tests sharing the server never see each other's."""
    return f"test.{request.node.name}"


async def backend_of(lock: FencedLock) -> int:
    holder = await lock.holder()
    assert holder is not None
    return holder.pid


async def test_one_holder_at_a_time_and_the_timeout_names_it(pool: asyncpg.Pool, name: str) -> None:
    async with FencedLock(pool, name, application_name="first holder") as first:
        pid = await backend_of(first)
        with pytest.raises(LockTimeoutError) as caught:
            async with FencedLock(pool, name, wait=0.3):
                pytest.fail("two holders held the lock at once")
        assert isinstance(caught.value, HookbusError)
        assert caught.value.pid == pid
        assert caught.value.application_name == "first holder"
        assert caught.value.since is not None
        message = str(caught.value)
        assert f"another holder holds the lock {name!r} (backend pid {pid}" in message
        assert f"backend pid {pid}, application_name 'first holder'" in message
        assert "waited 0.3 s" in message
    async with FencedLock(pool, name, wait=0.3):  # released with the block: taken at once
        pass


async def test_each_holder_gets_a_greater_token_than_every_earlier_one(
    pool: asyncpg.Pool, name: str
) -> None:
    tokens = []
    for _ in range(3):
        async with FencedLock(pool, name) as lock:
            tokens.append(lock.token)
    assert tokens == sorted(set(tokens)) and len(tokens) == 3
    with pytest.raises(LockLostError, match="not held"):
        _ = lock.token


async def test_a_fence_passes_for_the_holder_and_is_refused_once_another_took_the_lock(
    pool: asyncpg.Pool, name: str
) -> None:
    first = FencedLock(pool, name, wait=5)
    await first.__aenter__()
    async with pool.acquire() as conn:
        async with conn.transaction():
            await first.fence(conn)

        await pool.execute("SELECT pg_terminate_backend($1, 10000)", await backend_of(first))
        async with FencedLock(pool, name, wait=5) as second:
            assert second.token > first.token
            assert first.lost
            async with conn.transaction():
                assert not await first.still_current(conn)  # a new holder took it
                assert await second.still_current(conn)
            with pytest.raises(LockLostError):
                async with conn.transaction():
                    await first.fence(conn)
                    await conn.execute("SELECT 1")
                    pytest.fail("a lost holder's transaction went on")
            async with conn.transaction():
                await second.fence(conn)
    await first.__aexit__(None, None, None)  # leaving a lost lock is quiet


async def test_a_holder_that_lost_its_connection_is_still_current_until_another_takes_over(
    pool: asyncpg.Pool, name: str
) -> None:
    lock = FencedLock(pool, name)
    await lock.__aenter__()
    await pool.execute("SELECT pg_terminate_backend($1, 10000)", await backend_of(lock))
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(LockLostError, match="lost with its connection"):
            await lock.fence(conn)
        assert await lock.still_current(conn)  # nobody took it: its failure may be recorded
    await lock.__aexit__(None, None, None)


async def test_a_fenced_transaction_in_flight_holds_back_the_next_holder(
    pool: asyncpg.Pool, name: str
) -> None:
    await pool.execute("CREATE TABLE IF NOT EXISTS fenced_work (n int)")
    first = FencedLock(pool, name)
    await first.__aenter__()
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await first.fence(conn)
        await conn.execute("INSERT INTO fenced_work VALUES (1)")
        # The holder's lock connection dies while its fenced transaction runs on.
        await pool.execute("SELECT pg_terminate_backend($1, 10000)", await backend_of(first))

        with pytest.raises(LockTimeoutError, match=r"fenced by the previous holder .* still"):
            async with FencedLock(pool, name, wait=0.3):
                pytest.fail("the next holder got in while a fenced transaction ran")

        second = FencedLock(pool, name, wait=30, application_name=f"second {name}"[:63])
        entering = asyncio.create_task(second.__aenter__())
        pid = await _pid_of(pool, second.application_name)
        await wait_until_blocked_on_lock(pool, pid)
        assert not entering.done()
        await tx.commit()  # the fenced work lands before the next holder begins
        await asyncio.wait_for(entering, 10)
    try:
        assert second.token == first.token + 1  # the bump that timed out was rolled back
        assert await pool.fetchval("SELECT count(*) FROM fenced_work") == 1
    finally:
        await second.__aexit__(None, None, None)
        await first.__aexit__(None, None, None)


async def _pid_of(pool: asyncpg.Pool, application_name: str) -> int:
    # pg_stat_activity shows a backend's name once it set it: polled, there is nothing to await.
    query = "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
    for _ in range(1000):
        pid = await pool.fetchval(query, application_name)
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.01)
    raise AssertionError(f"no backend named {application_name!r}")


async def test_a_lock_sees_only_its_own_name(pool: asyncpg.Pool, name: str) -> None:
    async with FencedLock(pool, name + ".a") as a:
        assert await FencedLock(pool, name + ".b").holder() is None
        async with FencedLock(pool, name + ".b", wait=0.3) as b:
            assert (await backend_of(a)) != (await backend_of(b))
            async with hookbus_asyncpg.transaction(pool) as tx:  # as the first statement
                await a.fence(tx.connection)
                await b.fence(tx.connection)
        assert await b.holder() is None
        assert await a.holder() is not None


def test_bad_names_and_waits_are_refused_when_the_lock_is_made() -> None:
    pool: asyncpg.Pool = None  # type: ignore[assignment]  # never reached
    for name in ("", "a\x00b", "\udc80"):
        with pytest.raises(ValueError, match="lock name"):
            FencedLock(pool, name)
    for wait in (-1, float("nan"), True, "5"):
        with pytest.raises(ValueError, match="wait is seconds"):
            FencedLock(pool, "ok", wait=wait)  # type: ignore[arg-type]
