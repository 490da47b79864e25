"""hookbus_asgi's public surface: its __all__, and frameworks loaded only when asked for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import hookbus_asgi

ROOT = Path(__file__).resolve().parent.parent


def test_all_matches_the_public_names() -> None:
    public = {name for name in vars(hookbus_asgi) if not name.startswith("_")}
    public -= {"annotations", "fastapi", "litestar"}  # submodules, once another test loaded them
    assert sorted(hookbus_asgi.__all__) == hookbus_asgi.__all__
    assert set(hookbus_asgi.__all__) == public


def test_importing_hookbus_asgi_loads_no_web_framework() -> None:
    code = (
        "import sys, hookbus_asgi; "
        "print(sorted(m for m in ('fastapi', 'litestar', 'starlette', 'uvicorn') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT / "adapters",
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"
