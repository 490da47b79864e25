"""Worker processes killed by their pid and restarted: the harness of the kill and soak tests.

A :class:`Worker` is one command line (``hookbus consume ...``, and once the relay is merged
``hookbus outbox relay ...``): started, SIGKILLed, restarted, or stopped with SIGTERM. A
:class:`Fleet` kills a random running worker and restarts it. Adding a kind of worker to a
run is adding a :class:`Worker` to the fleet.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


def hookbus_command(*args: str) -> list[str]:
    """``hookbus ARGS...`` with the interpreter running the tests."""
    return [sys.executable, "-m", "hookbus", *args]


def consume_command(app: str, nats_url: str, stream: object, name: str, *extra: str) -> list[str]:
    """``hookbus consume`` on a test's stream (a ``_nats_consumer.Stream``)."""
    return hookbus_command(
        "consume", app, "--stream", stream.name, "--name", name,  # type: ignore[attr-defined]
        "--server", nats_url,
        "--dead-letter-stream", stream.dead_stream,  # type: ignore[attr-defined]
        "--dead-letter-prefix", stream.dead_prefix,  # type: ignore[attr-defined]
        *extra,
    )  # fmt: skip


@dataclass
class Worker:
    """One worker process: its command line, environment and log file."""

    argv: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    kills: int = 0
    ready_line: str = ": started"  # what the worker prints once it handles SIGTERM
    kind: str = "consume"
    supervised: bool = False  # restarted when it exits on its own, as systemd would
    crashes: list[str] = field(default_factory=list)  # why a supervised worker exited
    faults: Path | None = None  # the folder of _soak_faults: a kill there is no crash
    _offset: int = 0

    def start(self) -> None:
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL, by pid: no clean-up of any kind runs."""
        os.kill(self.pid, signal.SIGKILL)
        assert self.process is not None
        self.process.wait(30)
        self.kills += 1

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the worker (re)started last said it is ready (a log file offers nothing to
        await)."""
        deadline = time.monotonic() + timeout
        while self.ready_line not in self.log.read_text(errors="replace")[self._offset :]:
            if self.revive():
                continue
            assert self.process is not None and self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, f"not ready after {timeout}s: {self.output()}"
            time.sleep(0.02)

    def revive(self) -> bool:
        """Restart a supervised worker that exited on its own; whether it did."""
        if not self.supervised or self.process is None or self.process.poll() is None:
            return False
        aimed = (
            self.faults is not None
            and self.faults.joinpath(f"{self.kind}.taken.{self.pid}").exists()
        )
        if not aimed:  # else it killed itself at its fault point, as the soak asked
            said = self.log.read_text(errors="replace")[self._offset :].splitlines()
            errors = [line for line in said if "Error" in line and not line.startswith(" ")]
            self.crashes.append(errors[-1] if errors else f"exit status {self.process.returncode}")
        self.start()
        return True

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM once ready, and the exit status once it has finished its batch."""
        assert self.process is not None
        self.wait_ready()
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        return self.process.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Fleet:
    """Workers, one of which is killed and restarted at a time: the kinds of worker in turn
    (a consumer, a relay, a consumer...), a random worker of that kind."""

    workers: list[Worker]
    rng: random.Random = field(
        default_factory=lambda: random.Random(os.environ.get("HOOKBUS_SEED"))
    )
    kills: dict[str, int] = field(default_factory=dict)
    # kill_one and revive may run in two threads at once: one restart of a dead worker
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def kill_one(self, kind: str | None = None) -> Worker:
        """Kill a random worker of ``kind`` (by default the kinds in turn) and restart it."""
        if kind is None:
            kinds = sorted({w.kind for w in self.workers})
            kind = kinds[sum(self.kills.values()) % len(kinds)]
        worker = self.rng.choice([w for w in self.workers if w.kind == kind])
        with self._lock:
            worker.wait_ready()  # a kill lands on a worker at work, not on one still importing
            worker.kill()
            worker.start()
        self.kills[kind] = self.kills.get(kind, 0) + 1
        return worker

    def revive(self) -> None:
        """Restart the supervised workers that exited on their own."""
        with self._lock:
            for worker in self.workers:
                worker.revive()

    def crashes(self) -> dict[str, list[str]]:
        """Why supervised workers exited on their own (and were restarted), by kind."""
        found: dict[str, list[str]] = {}
        for worker in self.workers:
            found.setdefault(worker.kind, []).extend(worker.crashes)
        return found

    def stop(self, timeout: float = 60) -> list[int]:
        """SIGTERM to every worker once all are ready, then their exit statuses (each
        finishes its batch, or a standby its wait for the lock, at once with the others)."""
        for worker in self.workers:
            worker.wait_ready()
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                os.kill(worker.pid, signal.SIGTERM)
        return [worker.process.wait(timeout) for worker in self.workers if worker.process]


def relay_command(nats_url: str, stream: object, name: str, *extra: str) -> list[str]:
    """``hookbus outbox relay`` to a test's stream; it logs its counters every 0.2 s, the
    first time once it handles SIGTERM (the ready line ``published``)."""
    return hookbus_command(
        "outbox", "relay", "--stream", stream.name, "--name", name,  # type: ignore[attr-defined]
        "--server", nats_url, "--poll-interval", "0.05", "--stats-interval", "0.2", *extra,
    )  # fmt: skip


def worker_env(dsn: str, **extra: str) -> dict[str, str]:
    """The environment of a worker: the database, and the tests' folder on the path."""
    env = dict(os.environ)
    env["HOOKBUS_DSN"] = dsn
    tests = str(Path(__file__).parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (tests, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env
