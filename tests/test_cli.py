"""The ``hookbus`` command, run as a user runs it: the installed console script, in a folder of
the user's own; every mistake answered in one line on stderr with its exit status. Subcommands
registered by other distributions (the ``hookbus.commands`` entry-point group) are found, listed
and run like the core's own."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from hookbus_asyncpg.testing import create_database, drop_database, with_database

ROOT = Path(__file__).resolve().parent.parent
HOOKBUS = Path(sys.executable).parent / "hookbus"  # the console script pip installed

MYAPP = """
from hookbus import Bus, is_instance, where
bus = Bus()
other_bus = Bus()
count = 42

@bus.hook("before_add_entity", select=is_instance("Person"), category="integrity")
async def person_age(event): ...

@bus.hook("before_add_entity", priority=-1)
def stamp(event): ...

@bus.hook("server_startup", select=where(bool), category="metadata")
async def warm(event): ...
"""


def hookbus(*args: str, cwd: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {
        key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HOOKBUS_DSN")
    }
    env.update(variables)
    return subprocess.run(
        [str(HOOKBUS), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=60
    )


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "myapp.py").write_text(textwrap.dedent(MYAPP))
    (tmp_path / "broken.py").write_text("import hookbus\nlimit = 1 / 0\n")
    (tmp_path / "needs.py").write_text("import not_installed_anywhere\n")
    return tmp_path


def test_the_console_script_is_installed() -> None:
    assert HOOKBUS.is_file(), "pip install -e . installs the hookbus command"


def test_hooks_lists_every_event_key_hook_priority_and_category(app: Path) -> None:
    out = hookbus("hooks", "myapp:bus", cwd=app)
    assert out.returncode == 0, out.stderr
    assert [line.split() for line in out.stdout.splitlines()] == [
        ["EVENT", "KEY", "PRIORITY", "CATEGORY", "HOOK"],
        ["before_add_entity", "*", "-1", "default", "myapp.stamp"],
        ["before_add_entity", "Person", "0", "integrity", "myapp.person_age"],
        ["server_startup", "*", "(where)", "0", "metadata", "myapp.warm"],
    ]


def test_python_m_hookbus_runs_the_same_command(app: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hookbus", "hooks", "myapp:bus"],
        cwd=app,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "myapp.person_age" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["hoks", "myapp:bus"], "hookbus: unknown command 'hoks'; did you mean 'hooks'?"),
        (
            ["hooks", "myap:bus"],
            "hookbus hooks: no module named 'myap' in {cwd} or the installed packages; "
            "did you mean 'myapp'?",
        ),
        (
            ["hooks", "myapp"],
            "hookbus hooks: expected MODULE:ATTRIBUTE (for example myapp.hooks:bus), got 'myapp'",
        ),
        (
            ["hooks", "myapp:bsu"],
            "hookbus hooks: myapp has no attribute 'bsu'; did you mean 'bus'?",
        ),
        (
            ["hooks", "myapp:count"],
            "hookbus hooks: myapp:count is an int, not a hookbus.Bus (in myapp: bus, other_bus)",
        ),
        (["hooks", "myapp:bus.nope"], "hookbus hooks: myapp:bus has no attribute 'nope'"),
        (
            ["hooks", "broken:bus"],
            "hookbus hooks: importing broken failed: ZeroDivisionError: division by zero "
            "({cwd}/broken.py:2)",
        ),
        (
            ["hooks", "needs:bus"],
            "hookbus hooks: importing needs failed: No module named 'not_installed_anywhere' "
            "({cwd}/needs.py:1)",
        ),
    ],
    ids=["command", "module", "spec", "attribute", "type", "nested", "raises", "dependency"],
)
def test_each_mistake_is_one_line_on_stderr_and_exit_status_2(
    app: Path, args: list[str], message: str
) -> None:
    out = hookbus(*args, cwd=app)
    assert (out.returncode, out.stdout, out.stderr) == (2, "", message.format(cwd=app) + "\n")


def test_help_lists_the_commands_in_plain_text(app: Path) -> None:
    out = hookbus("--help", cwd=app)
    assert out.returncode == 0
    listed = {line.split(maxsplit=1)[0]: line.split(maxsplit=1)[1] for line in
              out.stdout.split("commands:\n")[1].split("\n\n")[0].splitlines()}  # fmt: skip
    assert listed["hooks"] == "list a bus's hooks, event by event, in call order"
    assert listed["migrate"] == "the same as upgrade; --dry-run prints the plan"
    assert "``" not in out.stdout and ":func:" not in out.stdout
    bare = hookbus(cwd=app)
    assert (bare.returncode, bare.stdout) == (2, "")
    assert bare.stderr.startswith("usage: hookbus COMMAND")


def test_a_core_subcommand_loads_no_adapter_and_help_imports_no_subcommand(app: Path) -> None:
    code = textwrap.dedent(
        """
        import contextlib, io, sys
        from hookbus.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            main(["hooks", "myapp:bus"])
        print("after hooks:", sorted(m for m in sys.modules if m.startswith(("asyncpg",
              "nats", "hookbus_"))))
        with contextlib.redirect_stdout(io.StringIO()):
            main(["--help"])
        print("after --help:", "hookbus_asyncpg._commands" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=app, capture_output=True, text=True, check=True
    )
    # --help imports the registered command modules, for their summaries
    assert out.stdout.splitlines() == ["after hooks: []", "after --help: True"]


def test_examples_import_without_pythonpath() -> None:
    out = hookbus("hooks", "examples.person_age:bus", cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "examples.person_age.person_age_range" in out.stdout


# -- subcommands of other distributions: the hookbus.commands entry-point group -----------------

GREET = """
import argparse
from hookbus.cli import CommandError, ExitStatus, add_dsn_option, dsn_from, hide_password

class Greet:
    summary = "greet someone on a database"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("who")
        add_dsn_option(parser)

    def run(self, args: argparse.Namespace) -> int:
        dsn = dsn_from(args, required=True)
        if args.who == "nobody":
            raise CommandError(f"nobody at {dsn}", ExitStatus.NOT_FOUND)
        print(f"hello {args.who} at {hide_password(dsn)}")
        return ExitStatus.OK

class Outbox:
    summary = "a command with sub-verbs"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        verbs = parser.add_subparsers(dest="verb", required=True)
        relay = verbs.add_parser("relay")
        relay.add_argument("--batch", type=int, default=100)
        verbs.add_parser("status")

    def run(self, args: argparse.Namespace) -> int:
        print(args.verb, getattr(args, "batch", "-"))
        return ExitStatus.OK

greet = Greet()
hooks = Greet()
mailbox = Outbox()
not_a_command = 42
"""


@pytest.fixture
def distribution(app: Path) -> Path:
    """A folder holding an installed distribution ``greeter`` that registers commands:
    ``greet`` (works), ``hooks`` (clashes with the core's), ``broken`` (its module raises),
    ``wrong`` (not a Subcommand), ``missing`` (its module needs what is not installed)."""
    site = app / "site"
    (site / "greeter-1.0.dist-info").mkdir(parents=True)
    (site / "greeter-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: greeter\nVersion: 1.0\n"
    )
    (site / "greeter-1.0.dist-info" / "entry_points.txt").write_text(
        "[hookbus.commands]\n"
        "greet = greeter:greet\n"
        "mailbox = greeter:mailbox\n"
        "hooks = greeter:hooks\n"
        "broken = greeter_broken:command\n"
        "wrong = greeter:not_a_command\n"
        "missing = needs:command\n"
    )
    (site / "greeter.py").write_text(textwrap.dedent(GREET))
    (site / "greeter_broken.py").write_text("raise RuntimeError('half installed')\n")
    return site


def with_site(site: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if key != "HOOKBUS_DSN"}
    environ.update(PYTHONPATH=str(site), **env)
    return subprocess.run(
        [str(HOOKBUS), *args], cwd=cwd, capture_output=True, text=True, env=environ, timeout=60
    )


def test_a_registered_command_is_listed_and_runs(distribution: Path, app: Path) -> None:
    listed = with_site(distribution, "--help", cwd=app)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    # (the column's width depends on the longest command installed: compare the words)
    assert ["greet", "greet someone on a database"] in [line.split(None, 1) for line in lines]
    assert [line.split()[0] for line in lines if line.startswith("  hooks")] == ["hooks"]
    assert any("broken" in line and "RuntimeError: half installed" in line for line in lines)
    assert any("wrong" in line and "is not a hookbus.cli.Subcommand" in line for line in lines)
    assert any("missing" in line and "needs the module 'needs'" in line for line in lines)

    out = with_site(distribution, "greet", "ada", "--dsn", "postgresql://u:s3cret@db/x", cwd=app)
    assert (out.returncode, out.stdout) == (0, "hello ada at postgresql://u:***@db/x\n")
    out = with_site(distribution, "greet", "bob", cwd=app, HOOKBUS_DSN="postgresql://db/y")
    assert (out.returncode, out.stdout) == (0, "hello bob at postgresql://db/y\n")


def test_a_registered_command_may_have_sub_verbs(distribution: Path, app: Path) -> None:
    out = with_site(distribution, "mailbox", "relay", "--batch", "7", cwd=app)
    assert (out.returncode, out.stdout) == (0, "relay 7\n"), out.stderr
    for args, message in [
        ((), "hookbus mailbox: the following arguments are required: verb"),
        (("relay", "--batch", "x"), "hookbus mailbox: argument --batch: invalid int value: 'x'"),
        (("nope",), "hookbus mailbox: argument verb: invalid choice: 'nope'"),
    ]:
        out = with_site(distribution, "mailbox", *args, cwd=app)
        assert (out.returncode, out.stdout, out.stderr.count("\n")) == (2, "", 1), out.stderr
        assert out.stderr.startswith(message), out.stderr


def test_a_built_in_command_cannot_be_replaced(distribution: Path, app: Path) -> None:
    out = with_site(distribution, "hooks", "myapp:bus", cwd=app)
    assert out.returncode == 0 and "myapp.person_age" in out.stdout


@pytest.mark.parametrize(
    ("args", "env", "status", "message"),
    [
        (["greet", "ada"], {}, 2, "hookbus greet: HOOKBUS_DSN is not set to a database URL"),
        (["greet", "ada"], {"HOOKBUS_DSN": "embedded"}, 2, "hookbus greet: HOOKBUS_DSN is not"),
        (["greet"], {}, 2, "hookbus greet: the following arguments are required: who "
         "('hookbus greet --help' describes it)"),
        (["greet", "nobody", "--dsn", "postgresql://u:pw1@h/d?password=pw2"], {}, 3,
         "hookbus greet: nobody at postgresql://u:***@h/d?password=***"),
        (["greet", "nobody"], {"HOOKBUS_DSN": "postgresql://u:pw%2F1@h/d"}, 3,
         "hookbus greet: nobody at postgresql://u:***@h/d"),
        (["broken"], {}, 1, "hookbus: the command 'broken' (greeter_broken:command "
         "(greeter)) cannot be loaded: RuntimeError: half installed"),
        (["wrong"], {}, 1, "hookbus: the command 'wrong'"),
        (["gret"], {}, 2, "hookbus: unknown command 'gret'; did you mean 'greet'?"),
    ],
    ids=["no-dsn", "embedded", "argument", "password", "encoded", "broken", "wrong", "typo"],
)  # fmt: skip
def test_a_registered_command_fails_in_one_line_with_its_status_and_no_password(
    distribution: Path, app: Path, args: list[str], env: dict[str, str], status: int, message: str
) -> None:
    out = with_site(distribution, *args, cwd=app, **env)
    assert (out.returncode, out.stdout, out.stderr.count("\n")) == (status, "", 1), out.stderr
    assert out.stderr.startswith(message)
    assert "pw1" not in out.stderr and "pw2" not in out.stderr and "pw%2F1" not in out.stderr


def test_the_exit_statuses_are_the_documented_ones() -> None:
    from hookbus.cli import ExitStatus

    assert {status.name: int(status) for status in ExitStatus} == {
        "OK": 0, "FAILURE": 1, "USAGE": 2, "NOT_FOUND": 3, "REFUSED": 4, "BUSY": 5,
    }  # fmt: skip


# -- the database commands against hostile input: one line, its status, nothing changed -------

PLUGINS = """
from hookbus import Bus, Environment, Plugin, PluginSet

plugins = PluginSet(
    Bus(), [Plugin("crm", "1.0"), Plugin("mail", "1.0"), Plugin("sales", "1.0", requires=("crm",))],
    env=Environment("test"),
)

def factory():
    raise RuntimeError("config missing")

def cyclic():
    return PluginSet(Bus(), [Plugin("a", "1.0", requires=("b",)),
                             Plugin("b", "1.0", requires=("a",))])
"""


def with_options(dsn: str, options: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}options={options}"


def hostile_cases(dsn: str) -> list[tuple[list[str], str, int, str]]:
    """(command line, HOOKBUS_DSN, exit status, the start of the message after 'hookbus X: ')"""
    dead = "postgresql://postgres:hunter2@127.0.0.1:9/postgres"  # the discard port: nobody
    no_db = with_database(dsn, "hookbus_no_such_database")
    read_only = with_options(dsn, "-c%20default_transaction_read_only%3Don")
    nats = "postgresql://postgres:hunter2@127.0.0.1:4222/postgres"  # NATS, not PostgreSQL
    return [
        (["plugins", "app:plugins"], dead, 1, "nothing answers at 127.0.0.1:9"),
        (["plugins", "app:plugins"], "mysql://root:hunter2@db/x", 2,
         "the DSN 'mysql://root:***@db/x' is not a PostgreSQL URL"),
        (["plugins", "app:plugins"], "garbage", 2, "the DSN 'garbage' is not a PostgreSQL URL"),
        (["plugins", "app:plugins"], "postgresql://u:hunter2@no-such-host.invalid/x", 1,
         "cannot find the host of the DSN (no-such-host.invalid"),
        (["plugins", "app:plugins"], no_db, 3,
         'database "hookbus_no_such_database" does not exist'),
        (["install", "app:plugins"], read_only, 4, "PostgreSQL at "),
        (["status", "app:plugins"], dead, 1, "nothing answers"),
        (["status", "app:plugins"], nats, 1, "cannot talk to PostgreSQL at 127.0.0.1:4222"),
        (["plugins", "app:plugins"], nats, 1, "cannot talk to PostgreSQL"),
        (["migrate", "--dry-run", "app:plugins"], nats, 1, "cannot talk to PostgreSQL"),
        (["migrate", "--dry-run", "app:plugins"], dead, 1, "nothing answers"),
        (["migrate", "--lock-wait", "-5", "app:plugins"], dsn, 2,
         "argument --lock-wait: '-5': give a finite number of seconds"),
        (["migrate", "--lock-wait", "nan", "app:plugins"], dsn, 2,
         "argument --lock-wait: 'nan': give a finite number of seconds"),
        (["install", "app:plugins", "nope"], dsn, 3,
         "no plugin named 'nope' in app:plugins (it has: crm, mail, sales)"),
        (["uninstall", "app:plugins", "mail"], dsn, 4, "plugin 'mail' is not installed"),
        (["uninstall", "app:plugins", "crm"], dsn, 4, "cannot uninstall 'crm'"),
        (["plugins", "app:factory"], dsn, 2,
         "app:factory() raised RuntimeError: config missing ({cwd}/app.py:"),
        (["plugins", "app:cyclic"], dsn, 4,
         "1 plugin problem(s), nothing was run: dependency cycle: a -> b -> a"),
        (["undo", "app:plugins", "crm", "9.0", "stage"], dsn, 4,
         "plugin 'crm' has no migration to 9.0"),
        (["status", "app:plugins"], "", 2, "HOOKBUS_DSN is not set to a database URL"),
        (["install", "app:plugins"], "embedded", 2, "HOOKBUS_DSN is not set to a database URL"),
        (["plugins", "app:plugin"], dsn, 2,
         "app has no attribute 'plugin'; did you mean 'plugins'"),
    ]  # fmt: skip


async def snapshot(pool: asyncpg.Pool) -> list[object]:
    """What the commands could change: the tables, and every row of hookbus's.

    ``hookbus_locks`` is left out: a command that takes the migration lock before refusing
    records its turn there (a token bump), which changes nothing a user relies on."""
    tables = await pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
    )
    rows: list[object] = [name for (name,) in tables]
    for (name,) in tables:
        if name.startswith("hookbus_") and name != "hookbus_locks":
            rows += [tuple(r) for r in await pool.fetch(f'SELECT * FROM "{name}" ORDER BY 1')]
    return rows


async def test_every_hostile_command_line_is_one_line_with_its_status_and_changes_nothing(
    tmp_path: Path, dsn: str, pool: asyncpg.Pool
) -> None:
    (tmp_path / "app.py").write_text(textwrap.dedent(PLUGINS))
    ok = hookbus("install", "app:plugins", "sales", cwd=tmp_path, HOOKBUS_DSN=dsn)
    assert (ok.returncode, ok.stdout) == (0, "installed: crm, sales\n"), ok.stderr
    before = await snapshot(pool)
    for args, environ, status, message in hostile_cases(dsn):
        out = await asyncio.to_thread(hookbus, *args, cwd=tmp_path, HOOKBUS_DSN=environ)
        said = f"{' '.join(args)} with HOOKBUS_DSN={environ!r}: {out.stderr}"
        assert (out.returncode, out.stdout) == (status, ""), said
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, said
        assert out.stderr.startswith(f"hookbus {args[0]}: " + message.format(cwd=tmp_path)), said
        assert "hunter2" not in out.stderr, said
        assert await snapshot(pool) == before, said


async def test_a_command_waiting_for_another_migrators_lock_says_busy(
    tmp_path: Path, dsn: str, pool: asyncpg.Pool
) -> None:
    from hookbus_asyncpg import MigrationLock

    (tmp_path / "app.py").write_text(textwrap.dedent(PLUGINS))
    async with MigrationLock(pool, wait=5):
        out = await asyncio.to_thread(
            hookbus, "install", "app:plugins", "--lock-wait", "0.2", cwd=tmp_path,
            HOOKBUS_DSN=dsn,
        )  # fmt: skip
    assert (out.returncode, out.stdout, out.stderr.count("\n")) == (5, "", 1), out.stderr
    assert out.stderr.startswith(
        "hookbus install: another migrator holds the lock 'hookbus.migrations'"
    )


def test_a_reader_that_goes_away_ends_a_command_quietly(app: Path) -> None:
    lines = "\n".join(f"@bus.hook('server_startup')\ndef h{i}(event): ...\n" for i in range(3000))
    (app / "many.py").write_text(f"from hookbus import Bus\nbus = Bus()\n{lines}")
    piped = subprocess.run(
        f"{HOOKBUS} hooks many:bus | head -1", shell=True, cwd=app, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert piped.stdout.startswith("EVENT") and piped.stderr == ""


def test_a_program_of_run_with_server_whose_reader_goes_away_ends_quietly(
    tmp_path: Path, server: str
) -> None:
    (tmp_path / "loud.py").write_text(
        textwrap.dedent(
            """
            from hookbus_asyncpg.testing import run_with_database

            async def main(dsn):
                for i in range(100_000):
                    print("line", i)

            run_with_database(main, "loud")
            """
        )
    )
    piped = subprocess.run(
        f"{sys.executable} loud.py | head -2", shell=True, cwd=tmp_path, capture_output=True,
        text=True, timeout=120, env={**os.environ, "HOOKBUS_DSN": server},
    )  # fmt: skip
    assert piped.stdout.splitlines()[1:] == ["line 0"] and piped.stderr == ""


def test_every_listing_is_one_table_layout() -> None:
    from hookbus.cli import render_table

    table = render_table([("NAME", "STATE", "ERROR"), ("crm", "installed", None), ("s", "", "x")])
    assert table.splitlines() == ["NAME  STATE      ERROR", "crm   installed", "s                x"]
    assert render_table([]) == ""


def test_hookbus_cli_exports_what_it_names() -> None:
    import hookbus.cli

    assert all(hasattr(hookbus.cli, name) for name in hookbus.cli.__all__)


@pytest.mark.parametrize("reader", ["true", "head -1", "head -12", "head -40"])
def test_run_demo_piped_into_a_reader_that_goes_away_ends_without_a_traceback(
    server: str, reader: str
) -> None:
    piped = subprocess.run(
        f"./run demo | {reader}", shell=True, cwd=ROOT, capture_output=True, text=True,
        timeout=300, env={**os.environ, "HOOKBUS_DSN": server},
    )  # fmt: skip
    assert piped.stderr == ""
    if reader.startswith("head"):
        assert len(piped.stdout.splitlines()) == int(reader.split("-")[1])


def test_the_server_rule_never_shows_a_password() -> None:
    from hookbus_asyncpg.testing import ServerUnavailableError, choose_server

    with pytest.raises(ServerUnavailableError) as refused:
        choose_server((), dsn="postgresql://u:hunter2@127.0.0.1:9/x?password=hunter3")
    assert "hunter" not in str(refused.value)
    assert "postgresql://u:***@127.0.0.1:9/x?password=***" in str(refused.value)


# -- hookbus status: what ran, how long, what failed and when ----------------------------------


@pytest.fixture
async def fresh(server: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The DSN of a database of this test's own, with no hookbus table in it."""
    database = await create_database(server, request.node.name)
    try:
        yield database
    finally:
        await drop_database(server, database)


LEDGER = """
import os
from pathlib import Path
from hookbus import Batch, BatchedStage, Bus, Migration, Plugin, PluginSet

async def post_init(ctx):
    await ctx.tx.connection.execute(
        "CREATE TABLE item (id int PRIMARY KEY, hits int NOT NULL DEFAULT 0);"
        "INSERT INTO item (id) SELECT generate_series(1, 10)"
    )

async def forgets_the_first_batch(batch: Batch):  # id > NULL matches no row
    await batch.tx.connection.execute(
        "UPDATE item SET hits = hits + 1 WHERE id > $1 AND id <= $2", batch.after, batch.last
    )

async def post_upgrade(ctx, from_version):
    flag = Path("fail-once")
    if flag.exists():
        flag.unlink()
        raise RuntimeError("the mail server is down")

plugins = PluginSet(Bus(), [Plugin(
    "ledger", os.environ["LEDGER_VERSION"], post_init=post_init, post_upgrade=post_upgrade,
    migrations=[Migration("2.0", [BatchedStage("hits", forgets_the_first_batch, table="item",
                                                batch_size=4)])],
)])
"""


async def test_status_says_what_ran_how_long_what_failed_and_when(
    tmp_path: Path, fresh: str
) -> None:
    (tmp_path / "app.py").write_text(textwrap.dedent(LEDGER))

    def run(*args: str, version: str = "2.0") -> subprocess.CompletedProcess[str]:
        return hookbus(*args, "app:plugins", cwd=tmp_path, HOOKBUS_DSN=fresh,
                       LEDGER_VERSION=version)  # fmt: skip

    nothing = run("status")
    assert (nothing.returncode, nothing.stdout) == (
        0, "nothing has run: no migration, no lifecycle hook\n"
    ), nothing.stderr  # fmt: skip
    assert run("install", version="1.0").returncode == 0
    (tmp_path / "fail-once").touch()
    failed = run("upgrade")
    assert failed.returncode == 1 and "the mail server is down" in failed.stderr
    assert run("upgrade").returncode == 0, "upgraded the second time"

    out = run("status", "--plugin", "ledger")
    assert out.returncode == 0, out.stderr
    tables, warning = out.stdout.rstrip("\n").rsplit("\n", 1)
    assert warning == (
        "warning: 1 batch(es) of ledger 2.0 / hits changed none of the rows of their page"
    )
    sections = {
        title: [line.split() for line in table.splitlines()]
        for title, table in (part.split(":\n", 1) for part in tables.split("\n\n"))
    }
    assert list(sections) == ["stages", "lifecycle hooks", "errors, oldest first"]
    header, *stages = sections["stages"]
    assert header == ["PLUGIN", "VERSION", "STAGE", "KIND", "STATUS", "ROWS", "BATCHES",
                      "UNTOUCHED", "SECONDS", "FINISHED", "CURSOR", "ERROR"]  # fmt: skip
    # its batches committed in the first upgrade; the second found the stage done
    assert [row[:8] for row in stages] == [
        ["ledger", "2.0", "hits", "batched", "completed", "10/10", "3", "1"]
    ]
    header, *hooks = sections["lifecycle hooks"]
    assert header == ["PLUGIN", "VERSION", "HOOK", "STATUS", "SECONDS", "STARTED", "ERROR"]
    assert [row[:4] for row in hooks] == [
        ["ledger", "1.0", "post_init", "completed"],
        ["ledger", "2.0", "post_upgrade", "failed"],
        ["ledger", "2.0", "post_upgrade", "completed"],
    ]
    assert " ".join(hooks[1][6:]) == "RuntimeError: the mail server is down"
    header, *errors = sections["errors, oldest first"]
    assert header == ["AT", "PLUGIN", "VERSION", "STEP", "ERROR"]
    [failure] = errors
    assert failure[1:] == ["ledger", "2.0", "post_upgrade", *hooks[1][6:]]
    # when: the failure is kept with its time, after its run started and before the next
    assert hooks[0][5] <= hooks[1][5] <= failure[0] <= hooks[2][5], out.stdout


async def relations(dsn: str) -> list[tuple[str, str]]:
    """Every relation of the database outside PostgreSQL's own schemas, and its kind."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1"
        )
    finally:
        await conn.close()
    return [tuple(row) for row in rows]


async def test_read_only_questions_change_nothing_where_hookbus_never_ran(
    tmp_path: Path, fresh: str
) -> None:
    (tmp_path / "app.py").write_text(textwrap.dedent(PLUGINS))
    assert await relations(fresh) == []
    for args, status, said in [
        (["status", "app:plugins"], 0, "nothing has run: no migration, no lifecycle hook\n"),
        (["status", "app:plugins", "--plugin", "crm"], 0, "nothing has run"),
        (["plugins", "app:plugins"], 0, "PLUGIN"),
        (["migrate", "--dry-run", "app:plugins"], 0, ""),
        (["uninstall", "app:plugins", "crm"], 4, ""),
        (["uninstall", "app:plugins", "crm", "--cascade"], 4, ""),
    ]:
        out = await asyncio.to_thread(hookbus, *args, cwd=tmp_path, HOOKBUS_DSN=fresh)
        assert (out.returncode, out.stdout[: len(said)]) == (status, said), (args, out.stderr)
        assert await relations(fresh) == [], (args, out.stdout)
    refused = hookbus("uninstall", "app:plugins", "crm", cwd=tmp_path, HOOKBUS_DSN=fresh)
    assert refused.stderr == "hookbus uninstall: plugin 'crm' is not installed\n"


def test_help_imports_no_driver() -> None:
    code = textwrap.dedent(
        """
        import contextlib, io, sys
        from hookbus.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as out:
            main(["--help"])
        assert "uninstall" in out.getvalue(), out.getvalue()  # the adapter's commands listed
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("asyncpg", "nats")))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout == "[]\n"


def test_the_adapters_public_names_import_on_first_use() -> None:
    import hookbus_asyncpg

    for name in hookbus_asyncpg.__all__:
        value = getattr(hookbus_asyncpg, name)
        if isinstance(value, str):  # a constant (WIRE_VERSION, OUTBOX_CHANNEL): it resolved
            continue
        assert value.__name__ == name, name
    assert sorted(hookbus_asyncpg.__all__) == hookbus_asyncpg.__all__
    assert set(hookbus_asyncpg.__all__) <= set(dir(hookbus_asyncpg))
    with pytest.raises(AttributeError, match="has no attribute 'Transaction'"):
        hookbus_asyncpg.Transaction  # noqa: B018
