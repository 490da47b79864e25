"""Kills aimed at the windows of exactly-once: a worker SIGKILLs itself at a fault point.

The soak arms a kind of worker by creating ``<HOOKBUS_TEST_FAULTS>/<kind>.armed``; the first
worker of that kind to reach its fault point renames the file to ``<kind>.taken.<pid>`` (one
rename wins) and SIGKILLs itself at once. The fault points, test code only:

- ``consume``: right after the COMMIT of a batch's transaction, before any of its messages is
  acknowledged (a postcommit operation of ``_nats_consumer_app``'s hook): every message of the
  batch is redelivered, and only the inbox stops it being applied twice;
- ``relay``: right after a batch is published and acknowledged, before its cursor is saved
  (``save_cursor`` wrapped by this module's entry point): the next relay sends the batch
  again, and only ``Nats-Msg-Id`` stops JetStream storing it twice.

Without ``HOOKBUS_TEST_FAULTS`` nothing is armed and nothing changes. The relay's entry point::

    python tests/_soak_faults.py outbox relay ARGS...   # as ``hookbus outbox relay ARGS...``
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

FAULTS = "HOOKBUS_TEST_FAULTS"
SAID = "fault point: killed myself"  # the line a worker writes to its log first


def strike(kind: str) -> None:
    """SIGKILL this process if ``kind`` is armed (and this process took the arming)."""
    folder = os.environ.get(FAULTS)
    if not folder:
        return
    pid = os.getpid()
    try:
        os.rename(Path(folder, f"{kind}.armed"), Path(folder, f"{kind}.taken.{pid}"))
    except FileNotFoundError:  # not armed, or another worker took it
        return
    print(f"{kind} {pid}: {SAID}", file=sys.stderr, flush=True)
    os.kill(pid, signal.SIGKILL)


def arm(folder: Path, kind: str) -> None:
    """The next worker of ``kind`` at its fault point kills itself."""
    Path(folder, f"{kind}.armed").touch()


def armed(folder: Path, kind: str) -> bool:
    return Path(folder, f"{kind}.armed").exists()


def taken(folder: Path, kind: str) -> list[int]:
    """The pids of the workers of ``kind`` that killed themselves."""
    return [int(p.name.rsplit(".", 1)[1]) for p in Path(folder).glob(f"{kind}.taken.*")]


def _relay_main() -> int:
    import hookbus_nats._relay as relay_module

    from hookbus._cli import main

    save_cursor = relay_module.save_cursor

    async def save_or_die(*args: Any, **kwargs: Any) -> Any:
        strike("relay")  # the batch is acknowledged; its cursor is not saved
        return await save_cursor(*args, **kwargs)

    relay_module.save_cursor = save_or_die  # type: ignore[assignment]
    return main(sys.argv[1:], prog="hookbus")


if __name__ == "__main__":
    raise SystemExit(_relay_main())
