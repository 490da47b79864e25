"""The public surface: __all__, the core's independence from drivers, the CLI."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import hookbus

ROOT = Path(__file__).resolve().parent.parent


def test_all_matches_the_public_names() -> None:
    # The installed pytest plugin rewrites hookbus's asserts ("@py_builtins") and imports the
    # submodule hookbus.testing: neither is a re-export.
    public = {
        name
        for name, value in vars(hookbus).items()
        if name.isidentifier() and not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert sorted(hookbus.__all__) == hookbus.__all__
    assert set(hookbus.__all__) == public


def test_importing_hookbus_loads_neither_asyncpg_nor_nats() -> None:
    code = "import sys, hookbus; print(sorted(m for m in ('asyncpg', 'nats') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_cli_lists_every_event_key_hook_priority_and_category(tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(
        textwrap.dedent(
            """
            from hookbus import Bus, is_instance, where
            bus = Bus()

            @bus.hook("before_add_entity", select=is_instance("Person"), category="integrity")
            async def person_age(event): ...

            @bus.hook("before_add_entity", priority=-1)
            def stamp(event): ...

            @bus.hook("server_startup", select=where(bool), category="metadata")
            async def warm(event): ...
            """
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "hookbus", "hooks", "myapp:bus"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT)},
    )
    lines = [line.split() for line in out.stdout.splitlines()]
    assert lines == [
        ["EVENT", "KEY", "PRIORITY", "CATEGORY", "HOOK"],
        ["before_add_entity", "*", "-1", "default", "myapp.stamp"],
        ["before_add_entity", "Person", "0", "integrity", "myapp.person_age"],
        ["server_startup", "*", "(where)", "0", "metadata", "myapp.warm"],
    ]


def test_cli_refuses_what_is_not_a_bus(tmp_path: Path) -> None:
    (tmp_path / "notabus.py").write_text("bus = 42\n")
    out = subprocess.run(
        [sys.executable, "-m", "hookbus", "hooks", "notabus:bus"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT)},
    )
    assert out.returncode != 0
    assert "not a hookbus.Bus" in out.stderr
