"""The ``hookbus`` command, run as a user runs it: the installed console script, in a folder of
the user's own; every mistake answered in one line on stderr with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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


def hookbus(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
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


def test_a_subcommand_and_the_adapters_load_only_when_run(app: Path) -> None:
    code = textwrap.dedent(
        """
        import contextlib, io, sys
        from hookbus._cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            main(["--help"])
        print("after --help:", "hookbus._cli._hooks" in sys.modules)
        with contextlib.redirect_stdout(io.StringIO()):
            main(["hooks", "myapp:bus"])
        print("after hooks:", sorted(m for m in ("asyncpg", "nats") if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=app, capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines() == ["after --help: False", "after hooks: []"]


def test_examples_import_without_pythonpath() -> None:
    out = hookbus("hooks", "examples.person_age:bus", cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "examples.person_age.person_age_range" in out.stdout
