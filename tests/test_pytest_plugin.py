"""The pytest plugin, run as users run it: in pytest sessions of their own (pytester).

Each test writes a small test module, runs it in a sub-session against the real PostgreSQL
(the module's database, named by HOOKBUS_TEST_DSN as a user would) and checks what the user
sees: outcomes, failure messages, and what is left in the database afterwards.
"""

from __future__ import annotations

import asyncio
import textwrap

import asyncpg
import pytest

import hookbus
from hookbus.testing import RECORDER_CATEGORY, capture_operations, record_events

pytest_plugins = ("pytester",)

SCHEMA = """
CREATE TABLE IF NOT EXISTS note (id serial PRIMARY KEY, body text NOT NULL);
CREATE TABLE IF NOT EXISTS tag (
    note_id int NOT NULL REFERENCES note (id) DEFERRABLE INITIALLY DEFERRED,
    label text NOT NULL
);
"""

# What the sub-sessions' test modules share: an application with one operation that writes
# down its phases, and a service that writes a note in a scope of its own.
APP = """
import hookbus
import hookbus_asyncpg

log = []


class Remember(hookbus.Operation):
    def __init__(self, name, fail=None):
        super().__init__()
        self.name = name
        self.fail = fail

    async def _run(self, phase):
        log.append(f"{self.name}.{phase}")
        if phase == self.fail:
            raise RuntimeError(f"{self.name} failed in {phase}")

    async def precommit(self):
        await self._run("precommit")

    async def postcommit(self):
        await self._run("postcommit")

    async def rollback(self):
        await self._run("rollback")


async def add_note(pool, body, fail=None):
    async with hookbus_asyncpg.transaction(pool) as tx:
        await tx.connection.execute("INSERT INTO note (body) VALUES ($1)", body)
        tx.add(Remember(body, fail))
"""


CONFTEST = """
import pytest
import app

@pytest.fixture(autouse=True)
def _fresh_log():
    app.log.clear()
"""

# The conftest of a project whose pool is session-wide, in the session's loop.
SESSION_POOL_CONFTEST = CONFTEST + textwrap.dedent(
    """
    import asyncpg
    import pytest_asyncio

    @pytest_asyncio.fixture(scope="session", loop_scope="session")
    async def hookbus_pool(hookbus_dsn):
        async with asyncpg.create_pool(hookbus_dsn, min_size=1, max_size=2) as pool:
            yield pool
    """
)


def _run(coro_factory: object) -> object:
    return asyncio.run(coro_factory())  # type: ignore[operator]


async def _count_notes(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM note")
        return count
    finally:
        await conn.close()


@pytest.fixture
def project(
    pytester: pytest.Pytester, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    """A user's project: the application module, its tables, HOOKBUS_TEST_DSN set."""

    async def create() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(SCHEMA)
        finally:
            await conn.close()

    asyncio.run(create())
    monkeypatch.setenv("HOOKBUS_TEST_DSN", dsn)
    monkeypatch.delenv("HOOKBUS_DSN", raising=False)
    pytester.makepyfile(app=APP)
    pytester.makeconftest(CONFTEST)
    pytester.syspathinsert()
    return pytester


def _ini(pytester: pytest.Pytester, mode: str, loop_scope: str = "function") -> None:
    pytester.makeini(
        f"""
        [pytest]
        asyncio_mode = {mode}
        asyncio_default_fixture_loop_scope = {loop_scope}
        asyncio_default_test_loop_scope = {loop_scope}
        """
    )


def _module(body: str, mode: str) -> str:
    """A test module; in strict mode its async tests carry the asyncio mark."""
    head = "import pytest\nimport app\n"
    if mode == "strict":
        head += "pytestmark = pytest.mark.asyncio\n"
    return head + textwrap.dedent(body)


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_rows_written_in_a_test_are_gone_and_postcommit_ran_inside_it(
    project: pytest.Pytester, dsn: str, mode: str
) -> None:
    _ini(project, mode)
    project.makepyfile(
        test_notes=_module(
            """
            async def test_write(hookbus_db):
                await app.add_note(hookbus_db.pool, "hello")
                # the scope committed (on a savepoint): postcommit ran, the row is visible
                assert app.log == ["hello.precommit", "hello.postcommit"]
                assert await hookbus_db.connection.fetchval("SELECT count(*) FROM note") == 1

            async def test_next_test_starts_empty(hookbus_db):
                assert await hookbus_db.connection.fetchval("SELECT count(*) FROM note") == 0
            """,
            mode,
        )
    )
    result = project.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=2)
    assert _run(lambda: _count_notes(dsn)) == 0


def test_a_postcommit_error_fails_the_test_with_its_message(project: pytest.Pytester) -> None:
    _ini(project, "auto")
    project.makepyfile(
        test_fail=_module(
            """
            async def test_postcommit_fails(hookbus_db):
                await app.add_note(hookbus_db.pool, "mail", fail="postcommit")
                # as in production, the caller carried on after the failed postcommit
                assert app.log == ["mail.precommit", "mail.postcommit"]

            async def test_expected_postcommit_error(hookbus_db):
                await app.add_note(hookbus_db.pool, "mail", fail="postcommit")
                [error] = hookbus_db.take_postcommit_errors()
                assert str(error) == "mail failed in postcommit"
            """,
            "auto",
        )
    )
    result = project.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*1 postcommit operation(s) raised during the test*",
            "*RuntimeError: mail failed in postcommit",
            "*hookbus: postcommit of <*Remember*> failed after COMMIT*",
            "FAILED test_fail.py::test_postcommit_fails*",
        ]
    )


def test_scopes_in_test_mode_nest_roll_back_and_check_deferred_constraints(
    project: pytest.Pytester,
) -> None:
    _ini(project, "auto")
    project.makepyfile(
        test_modes=_module(
            """
            import asyncpg
            import hookbus
            import hookbus_asyncpg

            async def test_a_failing_scope_rolls_back_to_its_savepoint(hookbus_db):
                with pytest.raises(RuntimeError):
                    await app.add_note(hookbus_db.pool, "bad", fail="precommit")
                assert app.log == ["bad.precommit", "bad.rollback"]
                await app.add_note(hookbus_db.pool, "good")
                rows = await hookbus_db.connection.fetch("SELECT body FROM note")
                assert [row["body"] for row in rows] == ["good"]

            async def test_a_scope_whose_block_raises_rolls_back(hookbus_db):
                with pytest.raises(RuntimeError, match="block fails"):
                    async with hookbus_asyncpg.transaction(hookbus_db.pool) as tx:
                        await tx.connection.execute("INSERT INTO note (body) VALUES ('gone')")
                        tx.add(app.Remember("raised"))
                        raise RuntimeError("block fails")
                assert app.log == ["raised.rollback"]
                assert await hookbus_db.connection.fetchval("SELECT count(*) FROM note") == 0

            async def test_a_nested_scope_joins_and_its_rollback_drops_its_operations(hookbus_db):
                pool = hookbus_db.pool
                async with hookbus_asyncpg.transaction(pool) as tx:
                    tx.add(app.Remember("outer"))
                    with pytest.raises(ValueError):
                        async with hookbus_asyncpg.transaction(pool) as inner:
                            assert inner is tx
                            tx.add(app.Remember("inner"))
                            raise ValueError
                assert app.log == ["inner.rollback", "outer.precommit", "outer.postcommit"]

            async def test_a_deferred_constraint_fails_at_commit(hookbus_db):
                with pytest.raises(asyncpg.ForeignKeyViolationError):
                    async with hookbus_asyncpg.transaction(hookbus_db.pool) as tx:
                        await tx.connection.execute("INSERT INTO tag VALUES (999, 'x')")
                        tx.add(app.Remember("tagged"))
                assert app.log == ["tagged.precommit", "tagged.rollback"]
                # the test's transaction is still usable, and the deferred mode is back
                await hookbus_db.connection.execute("INSERT INTO tag VALUES (998, 'y')")

            async def test_a_swallowed_error_aborts_the_scope(hookbus_db):
                with pytest.raises(hookbus.TransactionAbortedError):
                    async with hookbus_asyncpg.transaction(hookbus_db.pool) as tx:
                        tx.add(app.Remember("swallowed"))
                        try:
                            await tx.connection.execute("SELECT 1/0")
                        except asyncpg.DivisionByZeroError:
                            pass
                assert app.log == ["swallowed.precommit", "swallowed.rollback"]
                assert await hookbus_db.connection.fetchval("SELECT 1") == 1
            """,
            "auto",
        )
    )
    result = project.runpytest()
    result.assert_outcomes(passed=5)


def test_outbox_rows_in_test_mode_go_with_the_release(project: pytest.Pytester) -> None:
    _ini(project, "auto")
    project.makepyfile(
        test_outbox_mode=_module(
            """
            import asyncpg
            import hookbus
            import hookbus_asyncpg
            import msgspec
            from hookbus_asyncpg._outbox._outbox_table import OUTBOX_DDL, OUTBOX_DDL_1_1

            class Placed(msgspec.Struct):
                order: int

            async def test_rows_go_with_the_release(hookbus_db):
                conn = hookbus_db.connection
                await conn.execute(OUTBOX_DDL)
                await conn.execute(OUTBOX_DDL_1_1)
                await conn.execute(
                    "ALTER TABLE hookbus_outbox ADD CHECK (subject <> 'shop.refused')"
                )
                bus = hookbus.Bus()
                bus.declare("placed", Placed)
                outbox = hookbus_asyncpg.Outbox(bus, subject_prefix="shop")
                async with hookbus_asyncpg.transaction(hookbus_db.pool) as tx:
                    await outbox.publish(tx, "placed", Placed(1))
                    with pytest.raises(RuntimeError):
                        async with tx.savepoint():
                            await outbox.publish(tx, "placed", Placed(2))
                            raise RuntimeError
                    await outbox.publish(tx, "placed", Placed(3))
                with pytest.raises(asyncpg.CheckViolationError):
                    async with hookbus_asyncpg.transaction(hookbus_db.pool) as tx:
                        tx.add(app.Remember("refused"))
                        await outbox.publish(tx, "placed", Placed(4))
                        await outbox.publish(tx, "placed", Placed(5), subject="shop.refused")
                assert app.log == ["refused.precommit", "refused.rollback"]
                rows = await conn.fetch("SELECT payload FROM hookbus_outbox ORDER BY id")
                assert [msgspec.json.decode(r["payload"])["order"] for r in rows] == [1, 3]

            async def test_each_call_sends_its_statements_with_the_release(hookbus_db):
                await hookbus_db.connection.execute("CREATE TABLE sent (n int)")
                async with hookbus_asyncpg.transaction(hookbus_db.pool) as tx:
                    tx.send_with_commit("INSERT INTO sent VALUES (1);")
                    tx.send_with_commit("INSERT INTO sent VALUES (2);")
                rows = await hookbus_db.connection.fetch("SELECT n FROM sent")
                assert [r["n"] for r in rows] == [1, 2]
            """,
            "auto",
        )
    )
    result = project.runpytest()
    result.assert_outcomes(passed=2)


def test_a_session_wide_pool_with_session_loop_scope(project: pytest.Pytester, dsn: str) -> None:
    _ini(project, "strict", loop_scope="session")
    project.makeconftest(SESSION_POOL_CONFTEST)
    project.makepyfile(
        test_session=_module(
            """
            @pytest.mark.parametrize("body", ["one", "two", "three"])
            async def test_each_test_sees_only_its_rows(hookbus_db, body):
                await app.add_note(hookbus_db.pool, body)
                rows = await hookbus_db.connection.fetch("SELECT body FROM note")
                assert [row["body"] for row in rows] == [body]
            """,
            "strict",
        )
    )
    result = project.runpytest()
    result.assert_outcomes(passed=3)
    assert _run(lambda: _count_notes(dsn)) == 0


def test_a_failing_assert_emitted_says_what_was_emitted(pytester: pytest.Pytester) -> None:
    _ini(pytester, "auto")
    pytester.makepyfile(
        test_events="""
        import hookbus

        async def test_person_added(hookbus_recorder):
            bus = hookbus.Bus()
            events = hookbus_recorder(bus)
            payload = hookbus.EntityEvent("after_add_entity", "Company", 1, {})
            await bus.emit("after_add_entity", payload)
            assert events.payloads("after_add_entity") == [payload]
            events.assert_emitted("after_add_entity", key="Person", count=1)
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*expected 'after_add_entity' with key 'Person' to be emitted once, "
            "it was emitted 0 times",
            "*after_add_entity [[]key='Company'[]]: once",
        ]
    )


def test_the_core_plugin_alone_loads_no_driver(pytester: pytest.Pytester) -> None:
    _ini(pytester, "strict")
    pytester.makepyfile(
        test_light="""
        import sys

        def test_no_driver(hookbus_recorder, request):
            assert request.config.pluginmanager.has_plugin("hookbus")
            assert not request.config.pluginmanager.has_plugin("hookbus_asyncpg")
            assert "asyncpg" not in sys.modules
            assert "hookbus_asyncpg" not in sys.modules

        def test_no_database_fixture(hookbus_db):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:hookbus_asyncpg")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'hookbus_db' not found*"])


def test_no_hookbus_still_disables_the_database_fixtures_with_a_deprecation_warning(
    pytester: pytest.Pytester,
) -> None:
    _ini(pytester, "auto")
    pytester.makepyfile(
        test_off="""
        def test_recorder(hookbus_recorder):
            pass

        async def test_db(hookbus_db):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:hookbus")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*fixture 'hookbus_recorder' not found*"])
    result.stdout.fnmatch_lines(
        [
            "*DeprecationWarning: hookbus's database fixtures (hookbus_dsn, hookbus_pool, "
            "hookbus_db) moved to the pytest plugin 'hookbus_asyncpg'*",
        ]
    )
    quiet = pytester.runpytest_subprocess("-p", "no:hookbus", "-p", "no:hookbus_asyncpg")
    quiet.assert_outcomes(errors=2)
    assert "DeprecationWarning" not in quiet.stdout.str()


async def _databases(server: str) -> set[str]:
    conn = await asyncpg.connect(server)
    try:
        return {r[0] for r in await conn.fetch("SELECT datname FROM pg_database")}
    finally:
        await conn.close()


WHERE_AM_I = """
async def test_db(hookbus_db):
    name = await hookbus_db.connection.fetchval("SELECT current_database()")
    print("database:", name, "port:", await hookbus_db.connection.fetchval(
        "SELECT current_setting('port')"))
    await hookbus_db.connection.execute("CREATE TABLE mine (id int)")
"""


def test_without_a_dsn_the_database_fixtures_use_a_throwaway_database_on_the_local_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, server: str
) -> None:
    monkeypatch.delenv("HOOKBUS_TEST_DSN", raising=False)
    monkeypatch.delenv("HOOKBUS_DSN", raising=False)
    _ini(pytester, "auto")
    pytester.makepyfile(test_nodsn=WHERE_AM_I)
    result = pytester.runpytest_subprocess("-s")
    result.assert_outcomes(passed=1)
    [line] = [line for line in result.stdout.lines if "database: " in line]
    name = line.split("database: ")[1].split()[0]
    assert name.startswith("hookbus_hookbus_tests_")
    if "host=" not in server:  # the local server (not an embedded one the suite started)
        assert name not in asyncio.run(_databases(server)), "dropped after the session"


def test_without_a_dsn_or_a_local_server_the_database_fixtures_start_an_embedded_one(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOOKBUS_TEST_DSN", raising=False)
    monkeypatch.delenv("HOOKBUS_DSN", raising=False)
    monkeypatch.setenv("PGPORT", "9")  # nothing answers there: the local server is absent
    _ini(pytester, "auto")
    pytester.makepyfile(test_nodsn=WHERE_AM_I)
    result = pytester.runpytest_subprocess("-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*database: hookbus_hookbus_tests_*"])


# -- hookbus.testing used directly (no database) -------------------------------------------


async def test_the_recorder_sees_every_dispatch_first_even_one_a_hook_breaks() -> None:
    bus = hookbus.Bus()

    @bus.hook("before_add_entity", priority=-1000)
    def cancel(event: hookbus.EntityEvent) -> None:
        raise hookbus.Break("no")

    with record_events(bus) as events:
        person = hookbus.EntityEvent("before_add_entity", "Person", 1, {})
        await bus.emit("before_add_entity", person)
        await bus.emit("session_open", hookbus.SessionEvent("session_open"))
    await bus.emit("before_add_entity", person)  # not recorded: the recorder stopped
    assert events.assert_emitted("before_add_entity", key="Person", count=1) == [person]
    events.assert_emitted("session_open")
    events.assert_not_emitted("before_add_entity", key="Company")
    assert bus.registered() == (bus.hooks_for("before_add_entity", "Person")[0],)
    with pytest.raises(hookbus.UnknownEventError, match="before_add_entity"):
        events.assert_not_emitted("before_add_entiti")


class Step(hookbus.Operation):
    """Writes its phases to ``log``; its precommit schedules ``then`` (an operation loop)."""

    def __init__(self, log: list[str], name: str, then: Step | None = None) -> None:
        super().__init__()
        self.log, self.name, self.then = log, name, then

    async def precommit(self) -> None:
        self.log.append(f"{self.name}.precommit")
        if self.then is not None:
            hookbus.current_transaction().add(self.then)

    async def postcommit(self) -> None:
        self.log.append(f"{self.name}.postcommit")
        if self.name == "broken":
            raise RuntimeError("broken postcommit")

    async def rollback(self) -> None:
        self.log.append(f"{self.name}.rollback")


async def test_captured_operations_run_looping_and_leave_out_a_rolled_back_savepoint() -> None:
    log: list[str] = []
    async with capture_operations(execute=True) as captured:
        tx = hookbus.current_transaction()
        tx.add(Step(log, "first", then=Step(log, "added")))
        with pytest.raises(ValueError):
            async with tx.savepoint():
                tx.add(Step(log, "undone"))
                raise ValueError
        assert log == ["undone.rollback"]
    assert [op.name for op in captured.operations] == ["first", "added"]  # type: ignore[attr-defined]
    assert log == [
        "undone.rollback",
        "first.precommit",
        "added.precommit",
        "first.postcommit",
        "added.postcommit",
    ]


async def test_captured_operations_without_execute_are_not_run() -> None:
    log: list[str] = []
    async with capture_operations() as captured:
        hookbus.current_transaction().add(Step(log, "mail"))
    assert [op.name for op in captured.operations] == ["mail"]  # type: ignore[attr-defined]
    assert log == ["mail.rollback"]


async def test_a_captured_postcommit_error_is_raised() -> None:
    log: list[str] = []
    with pytest.raises(ExceptionGroup) as raised:
        async with capture_operations(execute=True):
            hookbus.current_transaction().add(Step(log, "broken"))
    assert [str(e) for e in raised.value.exceptions] == ["broken postcommit"]


STORE_APP = """
import hookbus
import hookbus_asyncpg
from hookbus_asyncpg import Attribute, EntityType, Schema, Store

bus = hookbus.Bus()
schema = Schema([EntityType("Member", name=Attribute(str, required=True))])
store = Store(bus, schema)
welcomed = []


class Welcome(hookbus.Operation):
    def __init__(self, eid):
        super().__init__()
        self.eid = eid

    async def postcommit(self):
        welcomed.append(self.eid)


@bus.hook("after_add_entity", select=hookbus.is_instance("Member"))
def welcome(event):
    hookbus.current_transaction().add(Welcome(event.eid))


async def join(pool, name):
    async with hookbus_asyncpg.transaction(pool):
        return await store.insert("Member", name=name)
"""


def test_a_users_store_test_records_events_and_runs_postcommit_on_rolled_back_rows(
    project: pytest.Pytester, dsn: str
) -> None:
    _ini(project, "auto")
    project.makepyfile(members=STORE_APP)
    project.makeconftest(
        CONFTEST
        + textwrap.dedent(
            """
            import asyncio
            import asyncpg
            import members

            @pytest.fixture(scope="session", autouse=True)
            def tables(hookbus_dsn):
                async def create():
                    async with asyncpg.create_pool(hookbus_dsn, min_size=1, max_size=1) as pool:
                        await members.store.create_tables(pool)
                asyncio.run(create())
            """
        )
    )
    project.makepyfile(
        test_members="""
        import members

        async def test_join(hookbus_db, hookbus_recorder):
            events = hookbus_recorder(members.bus)
            eid = await members.join(hookbus_db.pool, "ann")
            [added] = events.assert_emitted("after_add_entity", key="Member", count=1)
            assert added.eid == eid
            assert members.welcomed == [eid]
            assert await hookbus_db.connection.fetchval("SELECT count(*) FROM member") == 1
        """
    )
    result = project.runpytest()
    result.assert_outcomes(passed=1)

    async def members_left() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            count: int = await conn.fetchval("SELECT count(*) FROM member")
            return count
        finally:
            await conn.close()

    assert asyncio.run(members_left()) == 0


def test_only_scopes_on_the_tests_pool_or_connection_stand_in(
    project: pytest.Pytester, dsn: str
) -> None:
    _ini(project, "auto")
    project.makepyfile(
        test_scopes=_module(
            """
            import asyncio
            import asyncpg

            async def test_scopes(hookbus_db, hookbus_dsn):
                # on the test's connection, and in a task the test starts: test mode
                await app.add_note(hookbus_db.connection, "on the connection")
                await asyncio.create_task(app.add_note(hookbus_db.pool, "in a task"))
                # on a pool of its own: a real transaction, really committed
                async with asyncpg.create_pool(hookbus_dsn, min_size=1, max_size=1) as own:
                    await app.add_note(own, "committed")
                    assert await own.fetchval("SELECT count(*) FROM note") == 1
                assert app.log == [
                    "on the connection.precommit", "on the connection.postcommit",
                    "in a task.precommit", "in a task.postcommit",
                    "committed.precommit", "committed.postcommit",
                ]
            """,
            "auto",
        )
    )
    result = project.runpytest()
    result.assert_outcomes(passed=1)

    async def committed_only() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("DELETE FROM note RETURNING body")
            return [row["body"] for row in rows]
        finally:
            await conn.close()

    assert asyncio.run(committed_only()) == ["committed"]


def test_scopes_of_concurrent_tasks_that_overlap_are_refused_with_a_reason(
    project: pytest.Pytester,
) -> None:
    _ini(project, "auto")
    project.makepyfile(
        test_overlap=_module(
            """
            import asyncio
            import re
            import hookbus
            import hookbus_asyncpg

            async def test_overlap(hookbus_db):
                a_in, b_in, a_done = asyncio.Event(), asyncio.Event(), asyncio.Event()

                async def first():
                    try:
                        async with hookbus_asyncpg.transaction(hookbus_db.pool):
                            a_in.set()
                            await b_in.wait()
                    finally:
                        a_done.set()

                async def second():
                    await a_in.wait()
                    async with hookbus_asyncpg.transaction(hookbus_db.pool) as tx:
                        tx.add(app.Remember("second"))
                        b_in.set()
                        await a_done.wait()

                results = await asyncio.gather(first(), second(), return_exceptions=True)
                assert isinstance(results[0], hookbus.TransactionStateError)
                assert "scopes of concurrent tasks must not overlap" in str(results[0])
                # it names the savepoint still open, inside the one that ended
                inner, outer = re.search(r"\\((\\w+) inside (\\w+)\\)", str(results[0])).groups()
                assert inner != outer
                assert results[1] is None
                assert app.log == ["second.precommit", "second.postcommit"]
            """,
            "auto",
        )
    )
    result = project.runpytest()
    result.assert_outcomes(passed=1)


async def test_the_recorder_under_deny_all_records_only_if_its_category_is_allowed() -> None:
    bus = hookbus.Bus()
    payload = hookbus.EntityEvent("after_add_entity", "Person", 1, {})
    with record_events(bus) as events:
        with hookbus.hooks_control(hookbus.DENY_ALL, "integrity"):
            await bus.emit("after_add_entity", payload)
        events.assert_not_emitted("after_add_entity")
        with hookbus.hooks_control(hookbus.DENY_ALL, "integrity", RECORDER_CATEGORY):
            await bus.emit("after_add_entity", payload)
        events.assert_emitted("after_add_entity", count=1)


def test_a_session_pool_used_from_a_test_loop_says_which_settings_fix_it(
    project: pytest.Pytester,
) -> None:
    _ini(project, "auto", loop_scope="function")
    project.makeconftest(SESSION_POOL_CONFTEST)
    project.makepyfile(
        test_loops="""
        async def test_in_its_own_loop(hookbus_db):
            pass
        """
    )
    result = project.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*asyncio_default_test_loop_scope = session*"])


async def test_capture_inside_an_open_scope_is_refused() -> None:
    async with hookbus.transaction():
        with pytest.raises(hookbus.TransactionStateError, match="opens a scope of its own"):
            async with capture_operations():
                pass


# -- the documented ways: tables created in the test, a web app tested against hookbus_db ------

WEB_APP = """
import hookbus
import hookbus_asyncpg
from fastapi import FastAPI
from hookbus_asgi.fastapi import install_error_handlers, transaction

bus = hookbus.Bus()
schema = hookbus_asyncpg.Schema(
    entities=[hookbus_asyncpg.EntityType("Memo", body=hookbus_asyncpg.Attribute(str))]
)
store = hookbus_asyncpg.Store(bus, schema)
sent = []


class Notify(hookbus.Operation):
    async def postcommit(self):
        sent.append("memo")


@bus.hook("after_add_entity")
def notify(event):
    hookbus.current_transaction().add(Notify())


def make_app(pool):
    app = FastAPI()  # in production: a lifespan opens the pool and sets app.state.pool
    app.state.pool = pool
    install_error_handlers(app)

    @app.post("/memos", status_code=201)
    async def add(body: str, tx=transaction(lambda: app.state.pool)):
        return {"eid": await store.insert("Memo", body=body)}

    return app
"""


def test_a_web_app_runs_against_hookbus_db_with_tables_made_in_the_test(
    project: pytest.Pytester, dsn: str
) -> None:
    _ini(project, "auto")
    project.makepyfile(web=WEB_APP)
    project.makepyfile(
        test_web="""
        import httpx
        import web

        async def test_post(hookbus_db):
            await web.store.create_tables(hookbus_db.connection)  # rolled back with the test
            app = web.make_app(hookbus_db.pool)                  # not its lifespan's pool
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                answer = await client.post("/memos", params={"body": "hi"})
            assert answer.status_code == 201, answer.text
            assert web.sent == ["memo"]                          # its postcommit ran
            assert await hookbus_db.connection.fetchval("SELECT count(*) FROM memo") == 1

        async def test_gone(hookbus_db):
            exists = "SELECT to_regclass('memo') IS NOT NULL"
            assert await hookbus_db.connection.fetchval(exists) is False
        """
    )
    result = project.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=2)


def test_the_scope_factory_opens_scopes_on_the_tests_transaction(project: pytest.Pytester) -> None:
    _ini(project, "auto")
    project.makepyfile(
        test_factory="""
        import app

        async def test_write(hookbus_db, hookbus_scope):
            async with hookbus_scope() as tx:
                await tx.connection.execute("INSERT INTO note (body) VALUES ('kept?')")
                tx.add(app.Remember("factory"))
            assert app.log == ["factory.precommit", "factory.postcommit"]
            assert await hookbus_db.connection.fetchval("SELECT count(*) FROM note") == 1

        async def test_gone(hookbus_db):
            assert await hookbus_db.connection.fetchval("SELECT count(*) FROM note") == 0
        """
    )
    project.runpytest_subprocess().assert_outcomes(passed=2)


WEB_TEST = """
import os

import asyncpg
import httpx
from hookbus import current_transaction
from hookbus_asgi import TransactionMiddleware
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

import app


async def add_note(request):
    body = request.query_params["body"]
    tx = current_transaction()
    await tx.connection.execute("INSERT INTO note (body) VALUES ($1)", body)
    tx.add(app.Remember(body))
    return JSONResponse({"body": body}, status_code=400 if body == "refused" else 201)


def make_app(scopes):
    return TransactionMiddleware(Starlette(routes=[Route("/notes", add_note, methods=["POST"])]),
                                 scopes)


async def test_the_apps_writes_are_the_tests(hookbus_db, hookbus_scope):
    transport = httpx.ASGITransport(app=make_app(hookbus_scope))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.post("/notes", params={"body": "kept"})).status_code == 201
        assert (await client.post("/notes", params={"body": "refused"})).status_code == 400
    # each request's scope ran on a savepoint of the test's transaction, its whole lifecycle
    assert app.log == ["kept.precommit", "kept.postcommit", "refused.rollback"]
    bodies = await hookbus_db.connection.fetch("SELECT body FROM note")
    assert [row["body"] for row in bodies] == ["kept"]
    other = await asyncpg.connect(os.environ["HOOKBUS_TEST_DSN"])  # nothing committed
    try:
        assert await other.fetchval("SELECT count(*) FROM note") == 0
    finally:
        await other.close()


async def test_gone(hookbus_db):
    assert await hookbus_db.connection.fetchval("SELECT count(*) FROM note") == 0
"""


def test_a_web_app_given_the_scope_factory_writes_in_the_tests_transaction(
    project: pytest.Pytester, dsn: str
) -> None:
    _ini(project, "auto")
    project.makepyfile(test_web=WEB_TEST)
    project.runpytest_subprocess("-p", "no:randomly").assert_outcomes(passed=2)
    assert _run(lambda: _count_notes(dsn)) == 0
