"""examples/outbox_demo.py runs as written: written, relayed, consumed by another process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from _nats_consumer import nats_url_fixture  # noqa: F401

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_outbox_demo_counts_every_order_once(server: str, nats_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "outbox_demo.py", "200"],
        cwd=EXAMPLES,
        capture_output=True,
        text=True,
        env={**os.environ, "HOOKBUS_DSN": server, "HOOKBUS_NATS_URL": nats_url},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    for line in (
        "installed: ['hookbus_inbox', 'hookbus_outbox']",
        "wrote 200 orders (and rolled one back)",
        "the consumer applied 200 events",
        "consumer: consume totals: applied 200, duplicates 0,",
        "customer totals: {'ann': (67, ",
        "every order counted once: True (200 of 200)",
    ):
        assert line in out.stdout, f"{line!r} missing from the demo's output:\n{out.stdout}"
