"""Plugins: load order, problems reported together, install / upgrade / uninstall on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from _migration_app import FILL, SETUP
from hookbus_asyncpg import PluginManager, PluginStateError

from hookbus import (
    Bus,
    EntityEvent,
    Environment,
    Migration,
    Plugin,
    PluginError,
    PluginHook,
    PluginSet,
    Stage,
    StageContext,
)

ROOT = Path(__file__).resolve().parent.parent

# -- load order and problems (no database) --------------------------------------------------


def test_load_order_is_dependency_order_with_ties_by_name() -> None:
    plugins = [
        Plugin("sales", "1.0", requires=["base", "crm"]),
        Plugin("crm", "1.0", requires=["base"]),
        Plugin("base", "1.0"),
        Plugin("accounting", "1.0", requires=["base"], optional=["sales"]),
        Plugin("audit", "1.0"),
    ]
    expected = ("audit", "base", "crm", "sales", "accounting")
    assert PluginSet(Bus(), plugins).names() == expected
    assert PluginSet(Bus(), reversed(plugins)).names() == expected


def test_an_optional_dependency_that_is_absent_is_no_error() -> None:
    plugins = PluginSet(Bus(), [Plugin("reports", "1.0", optional=["charts"])])
    assert plugins.names() == ("reports",)


def test_every_problem_is_reported_at_once_naming_the_chains() -> None:
    def sync_post_init(ctx: StageContext) -> None: ...

    async def two_args(ctx: StageContext, extra: int) -> None: ...

    async def no_arg() -> None: ...

    plugins = [
        Plugin("app", "1.0", requires=["billing"]),
        Plugin("billing", "1.0", requires=["ledger"]),
        Plugin("a", "1.0", requires=["b"]),
        Plugin("b", "1.0", requires=["c"]),
        Plugin("c", "1.0", requires=["a"]),
        Plugin("hooks", "x.y", post_init=sync_post_init, uninstall=two_args),  # type: ignore[arg-type]
        Plugin("typo", "1.0", hooks=[PluginHook(no_arg, "before_add_entty")]),
    ]
    with pytest.raises(PluginError) as caught:
        PluginSet(Bus(), plugins)
    problems = caught.value.problems
    assert "missing dependency: app -> billing -> ledger ('ledger' is not available)" in problems
    assert "dependency cycle: a -> b -> c -> a" in problems
    assert any("'hooks'" in p and "version" in p for p in problems)
    assert any("'hooks': post_init must be an async function" in p for p in problems)
    assert any("'hooks': uninstall" in p and "1 positional" in p for p in problems)
    assert any("'typo'" in p and "before_add_entty" in p for p in problems)
    assert len(problems) == 6, problems


def test_an_entry_point_that_fails_to_import_is_reported_with_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.metadata as metadata

    broken = metadata.EntryPoint("broken", "no_such_module_xyz:plugin", "hookbus.plugins")
    good = metadata.EntryPoint("good", "tests.test_plugins:GOOD", "hookbus.plugins")

    def entry_points(group: str) -> list[metadata.EntryPoint]:
        return [broken, good] if group == "hookbus.plugins" else []

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    with pytest.raises(PluginError) as caught:
        PluginSet(Bus(), [Plugin("other", "1.0", requires=["missing"])], entry_points=True)
    problems = caught.value.problems
    assert any("'broken'" in p and "ModuleNotFoundError" in p for p in problems)
    assert any("other -> missing" in p for p in problems)
    assert len(problems) == 2


GOOD = Plugin("good", "1.0")


# -- on PostgreSQL --------------------------------------------------------------------------


@pytest_asyncio.fixture
async def db(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """The module's database with no plugin tables and no application table left over."""
    await pool.execute(
        "DROP TABLE IF EXISTS hookbus_batch, hookbus_stage, hookbus_plugin, hookbus_error, "
        "hookbus_hook_run, journal, item"
    )
    await pool.execute("CREATE TABLE journal (plugin text, what text)")
    yield pool


def journal(what: str) -> Any:
    async def write(ctx: StageContext, *rest: Any) -> None:
        detail = f"{what}{rest[0]}" if rest else what
        await ctx.tx.connection.execute("INSERT INTO journal VALUES ($1, $2)", ctx.plugin, detail)

    write.__name__ = what
    return write


async def journal_rows(pool: asyncpg.Pool) -> list[tuple[str, str]]:
    return [tuple(r) for r in await pool.fetch("SELECT plugin, what FROM journal")]


def lifecycle(name: str, version: str = "1.0", **kwargs: Any) -> Plugin:
    return Plugin(
        name, version, pre_init=journal("pre_init"), post_init=journal("post_init"),
        uninstall=journal("uninstall"), **kwargs,
    )  # fmt: skip


async def test_install_runs_pre_init_hooks_post_init_and_records_installed(
    db: asyncpg.Pool,
) -> None:
    bus = Bus()
    seen: list[Any] = []

    async def on_add(event: EntityEvent) -> None:
        seen.append(event.eid)

    async def post_init(ctx: StageContext) -> None:
        # the plugin's hooks are on the bus by post_init
        await ctx.bus.emit("after_add_entity", EntityEvent("after_add_entity", "T", 7, {}))

    plugins = PluginSet(bus, [
        lifecycle("base"),
        Plugin("crm", "1.0", requires=["base"], post_init=post_init,
               hooks=[PluginHook(on_add, "after_add_entity")]),
    ])  # fmt: skip
    manager = PluginManager(db, plugins)
    assert await manager.install() == ["base", "crm"]
    assert seen == [7]
    assert await journal_rows(db) == [("base", "pre_init"), ("base", "post_init")]
    states = await manager.states()
    assert {n: (s.state, s.version) for n, s in states.items()} == {
        "base": ("installed", "1.0"),
        "crm": ("installed", "1.0"),
    }
    assert await manager.install() == []  # installed already: nothing runs twice
    assert len(await journal_rows(db)) == 2


async def test_a_failure_mid_install_is_visible_and_a_rerun_resumes(db: asyncpg.Pool) -> None:
    bus = Bus()
    attempts = []

    async def on_add(event: EntityEvent) -> None: ...

    async def flaky_post_init(ctx: StageContext) -> None:
        await ctx.tx.connection.execute("INSERT INTO journal VALUES ('crm', 'post_init')")
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("the CRM service is down")

    plugins = PluginSet(bus, [
        lifecycle("base"),
        Plugin("crm", "1.0", requires=["base"], post_init=flaky_post_init,
               hooks=[PluginHook(on_add, "after_add_entity")]),
        lifecycle("sales", requires=["crm"]),
    ])  # fmt: skip
    manager = PluginManager(db, plugins)
    with pytest.raises(RuntimeError, match="CRM service is down") as caught:
        await manager.install()
    assert "while installing plugin 'crm' 1.0" in "".join(caught.value.__notes__)
    states = await manager.states()
    assert states["base"].state == "installed"
    assert (states["crm"].state, states["crm"].version) == ("failed", None)
    assert states["crm"].error == "RuntimeError: the CRM service is down"
    assert "sales" not in states  # not attempted
    assert bus.hooks_for("after_add_entity", "T") == ()  # its hooks left with the rollback
    assert ("crm", "post_init") not in await journal_rows(db)  # its work rolled back

    assert await manager.install() == ["crm", "sales"]  # resumes at the failed one
    states = await manager.states()
    assert [states[n].state for n in ("base", "crm", "sales")] == ["installed"] * 3
    assert states["crm"].error is None
    assert [h.name for h in bus.hooks_for("after_add_entity", "T")] == [
        f"{on_add.__module__}.{on_add.__qualname__}"
    ]
    assert (await journal_rows(db)).count(("base", "pre_init")) == 1


async def test_upgrade_runs_the_migrations_between_versions_then_post_upgrade(
    db: asyncpg.Pool,
) -> None:
    def plugin(version: str) -> Plugin:
        return Plugin(
            "crm", version, post_upgrade=journal("post_upgrade from "),
            migrations=[
                Migration("1.1", [Stage("one-one", journal("migrate 1.1"))]),
                Migration("2.0", [Stage("two", journal("migrate 2.0"))]),
                Migration("3.0", [Stage("three", journal("migrate 3.0"))]),
            ],
        )  # fmt: skip

    await PluginManager(db, PluginSet(Bus(), [plugin("1.0")])).install()
    manager = PluginManager(db, PluginSet(Bus(), [plugin("2.0")]))
    assert [(s.stage, s.action) for s in await manager.plan()] == [
        ("one-one", "run"),
        ("two", "run"),
    ]
    assert await manager.upgrade() == ["crm"]
    assert await journal_rows(db) == [
        ("crm", "migrate 1.1"),
        ("crm", "migrate 2.0"),
        ("crm", "post_upgrade from 1.0"),
    ]
    state = (await manager.states())["crm"]
    assert (state.state, state.version) == ("installed", "2.0")
    assert await manager.upgrade() == []
    stages = await manager.progress("crm")
    assert [(s.version, s.stage, s.status) for s in stages] == [
        ("1.1", "one-one", "completed"),
        ("2.0", "two", "completed"),
    ]


async def test_a_failed_upgrade_stays_at_its_version_and_a_rerun_resumes(
    db: asyncpg.Pool,
) -> None:
    broken = True

    async def second(ctx: StageContext) -> None:
        await ctx.tx.connection.execute("INSERT INTO journal VALUES ('crm', 'second')")
        if broken:
            raise ValueError("bad data in row 12")

    def plugin(version: str) -> Plugin:
        return Plugin("crm", version, migrations=[
            Migration("2.0", [Stage("first", journal("first")), Stage("second", second)]),
        ])  # fmt: skip

    await PluginManager(db, PluginSet(Bus(), [plugin("1.0")])).install()
    manager = PluginManager(db, PluginSet(Bus(), [plugin("2.0")]))
    with pytest.raises(Exception, match="bad data in row 12"):
        await manager.upgrade()
    state = (await manager.states())["crm"]
    assert (state.state, state.version, state.target_version) == ("failed", "1.0", "2.0")
    assert [(s.stage, s.status) for s in await manager.progress("crm")] == [
        ("first", "completed"),
        ("second", "failed"),
    ]
    assert [(s.stage, s.action) for s in await manager.plan()] == [
        ("first", "skip (completed)"),
        ("second", "resume"),
    ]
    broken = False
    assert await manager.upgrade() == ["crm"]
    assert await journal_rows(db) == [("crm", "first"), ("crm", "second")]
    assert (await manager.states())["crm"].state == "installed"


async def test_uninstall_is_refused_while_a_dependant_is_installed_and_cascades(
    db: asyncpg.Pool,
) -> None:
    bus = Bus()

    async def on_add(event: EntityEvent) -> None: ...

    plugins = PluginSet(bus, [
        lifecycle("base"),
        lifecycle("crm", requires=["base"], hooks=[PluginHook(on_add, "after_add_entity")]),
        lifecycle("sales", requires=["crm"]),
        lifecycle("audit"),
    ])  # fmt: skip
    manager = PluginManager(db, plugins)
    await manager.install()
    with pytest.raises(PluginStateError, match=r"crm \(requires crm -> base\)") as caught:
        await manager.uninstall("base")
    assert "sales (requires sales -> crm -> base)" in str(caught.value)
    assert {s.state for s in (await manager.states()).values()} == {"installed"}

    assert await manager.uninstall("base", cascade=True) == ["sales", "crm", "base"]
    states = await manager.states()
    assert {n: s.state for n, s in states.items()} == {
        "audit": "installed",
        "base": "uninstalled",
        "crm": "uninstalled",
        "sales": "uninstalled",
    }
    assert bus.hooks_for("after_add_entity", "T") == ()
    uninstalls = [r for r in await journal_rows(db) if r[1] == "uninstall"]
    assert uninstalls == [("sales", "uninstall"), ("crm", "uninstall"), ("base", "uninstall")]
    with pytest.raises(PluginStateError, match="'base' is not installed"):
        await manager.uninstall("base")
    assert await manager.install(["sales"]) == ["base", "crm", "sales"]  # reinstalls


async def test_activate_registers_the_hooks_of_installed_plugins_only(db: asyncpg.Pool) -> None:
    async def on_add(event: EntityEvent) -> None: ...

    async def on_delete(event: EntityEvent) -> None: ...

    def plugins(bus: Bus) -> PluginSet:
        return PluginSet(bus, [
            Plugin("crm", "1.0", hooks=[PluginHook(on_add, "after_add_entity")]),
            Plugin("sales", "1.0", hooks=[PluginHook(on_delete, "after_delete_entity")]),
        ], env=Environment("test"))  # fmt: skip

    await PluginManager(db, plugins(Bus())).install(["crm"])
    restarted = Bus()
    assert await PluginManager(db, plugins(restarted)).activate() == ["crm"]
    assert [h.fn for h in restarted.registered()] == [on_add]


def cli(dsn: str | None, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m hookbus ARGS`` on the test application of _migration_app.py."""
    environ = {k: v for k, v in os.environ.items() if k != "HOOKBUS_DSN"}
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "adapters")])
    if dsn is not None:
        environ["HOOKBUS_DSN"] = dsn
    return subprocess.run(
        [sys.executable, "-m", "hookbus", *args],
        cwd=ROOT / "tests", env={**environ, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_the_cli_lists_installs_plans_migrates_shows_status_and_uninstalls(
    dsn: str, pool: asyncpg.Pool
) -> None:
    await pool.execute(SETUP)
    await pool.execute(FILL, 1000)
    app = "_migration_app:plugins"
    old = {"HOOKBUS_TEST_VERSION": "1.0"}
    listed = cli(dsn, "plugins", app, **old)
    assert listed.returncode == 0, listed.stderr
    assert "counter  1.0      -          not installed  -" in listed.stdout

    assert cli(dsn, "install", app, **old).stdout == "installed: counter\n"
    listed = cli(dsn, "plugins", app).stdout
    assert "counter  2.0      1.0        installed" in listed

    plan = cli(dsn, "migrate", "--dry-run", app)
    assert plan.returncode == 0, plan.stderr
    assert "counter  2.0      count  batched  run     batches of 200 over counted.id" in plan.stdout
    assert await pool.fetchval("SELECT count(*) FROM counted WHERE hits > 0") == 0  # dry

    migrated = cli(dsn, "migrate", app, "--progress", "lines")
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout == "upgraded: counter\n"
    assert "counter 2.0 / count: 1,000/1,000 rows" in migrated.stderr
    status = cli(dsn, "status", app).stdout
    # (column widths follow the longest stage: hookbus's own tables' stage is listed too)
    assert "counter 2.0 count batched completed 1,000/1,000 5" in " ".join(status.split())
    assert "hookbus 2.0 batch intervals, error history, hook runs atomic completed" in " ".join(
        status.split()
    )

    refused = cli(None, "uninstall", app, "counter")
    assert refused.returncode != 0 and "HOOKBUS_DSN is not set" in refused.stderr
    assert cli(dsn, "uninstall", app, "counter").stdout == "uninstalled: counter\n"
    assert "counter  2.0      2.0        uninstalled" in cli(dsn, "plugins", app).stdout


def test_the_plugin_migration_example_runs_as_written(server: str) -> None:
    out = subprocess.run(
        [sys.executable, "plugin_migration.py", "20000"],
        cwd=ROOT / "examples", env={**os.environ, "HOOKBUS_DSN": server},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    for line in (
        "installed: ['base', 'catalog']",
        "2.0 computed fields  batched  run batches of 5,000 over product.id",
        "2.0 external sync    atomic   skip (condition)",
        "upgraded: ['catalog']",
        "upgraded again, nothing left to do: []",
        "  with external_sync on: external sync run (condition now holds)",
        "upgraded with the flag: ['catalog']",
        "  post_init    1.0  completed",
        "computed fields  batched  completed     20,000       4",
        "plugin catalog: installed at 2.0",
        "product 10 after the migration: {'new_field': 'p10_v3_r1', 'category_id': 3}",
    ):
        assert line in out.stdout, f"{line!r} missing from:\n{out.stdout}"


async def test_a_plugin_state_moves_only_as_its_state_machine_allows(db: asyncpg.Pool) -> None:
    from hookbus_asyncpg._plugins._plugin_state import write_state

    await PluginManager(db, PluginSet(Bus(), [Plugin("crm", "1.0")])).install()
    async with db.acquire() as conn:
        with pytest.raises(PluginStateError, match="cannot move from installed to installing"):
            await write_state(conn, "crm", was="installed", version=None, target="1.0",
                              state="installing", requires=())  # fmt: skip
        with pytest.raises(PluginStateError, match="'crm' is no longer failed"):
            await write_state(conn, "crm", was="failed", version="1.0", target="2.0",
                              state="upgrading", requires=())  # fmt: skip
    assert (
        await db.fetchval("SELECT state FROM hookbus_plugin WHERE name <> 'hookbus'")
    ) == "installed"


def test_migrations_declared_twice_or_wrongly_are_reported() -> None:
    async def run(ctx: StageContext) -> None: ...

    twice = Plugin("erp", "2.0", migrations=[Migration("2.0", [Stage("s", run)])] * 2)
    wrong = Plugin("hr", "2.0", migrations=["2.0"])  # type: ignore[list-item]
    with pytest.raises(PluginError) as caught:
        PluginSet(Bus(), [twice, wrong])
    assert caught.value.problems == (
        "plugin 'erp': two migrations for the same version in ['2.0', '2.0']",
        "plugin 'hr': '2.0' is not a Migration",
    )


def test_plugin_names_and_versions_postgresql_cannot_store_are_refused_before_anything_runs() -> (
    None
):
    with pytest.raises(PluginError) as caught:
        PluginSet(
            Bus(),
            [Plugin("nul\x00", "1.0"), Plugin("\ud800", "1.0"), Plugin("digits", "٣.1")],
        )
    problems = caught.value.problems
    assert any("'nul\\x00': a plugin name must not contain a NUL character" in p for p in problems)
    assert any("'\\ud800': a plugin name must be valid Unicode" in p for p in problems)
    assert any("'digits': a version is dotted integers" in p for p in problems)


async def test_a_stage_skipped_by_its_condition_runs_once_it_holds_and_the_dry_run_shows_it(
    db: asyncpg.Pool,
) -> None:
    def plugins(version: str, env: Environment) -> PluginSet:
        sync = Stage("sync", journal("sync"), condition=lambda e: e.enabled("external_sync"))
        migrations = [Migration("2.0", [Stage("data", journal("data")), sync])]
        return PluginSet(Bus(), [Plugin("p", version, migrations=migrations)], env=env)

    production = Environment("production")
    await PluginManager(db, plugins("1.0", production)).install()
    assert await PluginManager(db, plugins("2.0", production)).upgrade() == ["p"]
    assert await journal_rows(db) == [("p", "data")]  # sync skipped: the flag is off
    flagged = PluginManager(db, plugins("2.0", Environment("test", flags=["external_sync"])))
    assert [(s.version, s.stage, s.action) for s in await flagged.plan()] == [
        ("2.0", "sync", "run (condition now holds)")
    ]
    assert await flagged.upgrade() == ["p"]
    assert await journal_rows(db) == [("p", "data"), ("p", "sync")]
    assert await flagged.plan() == []  # done now: nothing left to run, nothing runs twice
    assert await flagged.upgrade() == []
    # without the flag, the dry run of an up-to-date install has nothing to show
    assert await PluginManager(db, plugins("2.0", production)).plan() == []


async def test_lifecycle_hooks_are_recorded_like_stages_and_every_failure_is_kept(
    db: asyncpg.Pool,
) -> None:
    fail = [2]

    async def post_upgrade(ctx: StageContext, from_version: str) -> None:
        await ctx.tx.connection.execute("SELECT pg_sleep(0.1)")
        if fail[0]:
            fail[0] -= 1
            raise RuntimeError(f"post_upgrade broke ({fail[0]} more)")

    def plugins(version: str) -> PluginSet:
        return PluginSet(Bus(), [lifecycle("p", version, post_upgrade=post_upgrade)])

    await PluginManager(db, plugins("1.0")).install()
    manager = PluginManager(db, plugins("2.0"))
    for _ in range(2):
        with pytest.raises(RuntimeError, match="post_upgrade broke"):
            await manager.upgrade()
    assert await manager.upgrade() == ["p"]
    await manager.uninstall("p")

    runs = await manager.hook_runs("p")
    assert [(r.hook, r.version, r.status) for r in runs] == [
        ("pre_init", "1.0", "completed"),
        ("post_init", "1.0", "completed"),
        ("post_upgrade", "2.0", "failed"),
        ("post_upgrade", "2.0", "failed"),
        ("post_upgrade", "2.0", "completed"),
        ("uninstall", "2.0", "completed"),
    ]
    for run in runs:  # the interval is the duration, by the server's clock
        elapsed = (run.finished_at - run.started_at).total_seconds()
        assert abs(elapsed - run.duration) < 0.001
    assert all(r.duration >= 0.1 for r in runs if r.hook == "post_upgrade")
    assert runs[2].error == "RuntimeError: post_upgrade broke (1 more)"
    errors = await manager.errors("p")  # each failure with its time, not only the last
    assert [(e.step, e.error) for e in errors] == [
        ("post_upgrade", "RuntimeError: post_upgrade broke (1 more)"),
        ("post_upgrade", "RuntimeError: post_upgrade broke (0 more)"),
    ]
    assert errors[0].at < errors[1].at


def test_every_cycle_is_reported_with_the_missing_dependencies_and_the_rest_still_ordered() -> None:
    plugins = [
        Plugin("x", "1.0", requires=["y"]),
        Plugin("y", "1.0", requires=["z"]),
        Plugin("z", "1.0", requires=["x"]),
        Plugin("b", "1.0", requires=["a"]),
        Plugin("a", "1.0", requires=["b", "gone"]),
        Plugin("fine", "1.0"),
    ]
    with pytest.raises(PluginError) as caught:
        PluginSet(Bus(), plugins)
    assert caught.value.problems == (
        "missing dependency: b -> a -> gone ('gone' is not available)",
        "dependency cycle: a -> b -> a",
        "dependency cycle: x -> y -> z -> x",
    )
