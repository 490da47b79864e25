"""The public surface: __all__, and the core's independence from drivers."""

from __future__ import annotations

import subprocess
import sys
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
