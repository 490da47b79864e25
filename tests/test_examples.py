"""The examples run as written: the demo, as ``./run demo`` runs it, on the test server; the
``run`` script refuses what it does not know."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_runs_as_written() -> None:
    out = subprocess.run(
        [sys.executable, "quickstart.py"], cwd=EXAMPLES, capture_output=True, text=True, check=True
    )
    assert "edited after the before-hooks: {'name': 'ANN', 'age': 40}" in out.stdout
    assert "collected with notifications off: []" in out.stdout


def test_demo_runs_every_example_and_shows_what_the_hooks_did(server: str) -> None:
    out = subprocess.run(
        [sys.executable, "demo.py"],
        cwd=EXAMPLES,
        capture_output=True,
        text=True,
        env={**os.environ, "HOOKBUS_DSN": server},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    for line in (
        "age 130 refused by person_age_range",
        "the database still holds: {'name': 'Ann', 'age': 40}",
        "Kid as boss of Acme refused by boss_of_legal_age",
        "the boss of Acme: ['Ann']",
        "refused at precommit: entity 3: subsidiary_of: a company cannot be its own subsidiary",
        "inserted 'ann lee', stored 'ANN LEE'",
        "delete(2026-001) happened: False",
        "live invoices: ['2026-002']",
        "stock: {'apple': 7}",
        "second get, from the cache: {'code': 'FR', 'name': 'France'} (0 queries)",
        "people, private ones skipped by after_load: ['Ann']",
        "audit after the rollback: [{'eid': 1, 'attempted': \"{'balance': -20}\"}]",
        "precommit: one operation checked 100,000 emails",
        "imported 100,000 people in",
        "an import with a duplicate email was refused whole",
        "installed: ['base', 'catalog']",
        "upgraded: ['catalog']",
        "plugin catalog: installed at 2.0",
    ):
        assert line in out.stdout, f"{line!r} missing from the demo's output:\n{out.stdout}"


def test_run_refuses_an_unknown_command() -> None:
    out = subprocess.run(
        [str(EXAMPLES.parent / "run"), "foo"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert out.stderr.startswith("run: unknown command 'foo'\n")
    assert "./run demo" in out.stderr
