"""How a running batched stage shows itself: a tqdm bar on a terminal, log lines elsewhere.

tqdm (the ``progress`` extra) draws the bar: rows done of total, rate and time left, redrawn
at most ten times a second. Without a terminal, or without tqdm, a log line on the
``hookbus.migrations`` logger says the same at most every ``HOOKBUS_PROGRESS_INTERVAL``
seconds (default 5; 0 logs every batch).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Final, Protocol

__all__ = ["LogProgress", "Progress", "open_progress"]

logger: Final = logging.getLogger("hookbus.migrations")


class Progress(Protocol):
    """What the migrator tells about a batched stage as it runs."""

    def advance(self, rows: int) -> None:
        """``rows`` more rows were committed."""

    def close(self) -> None:
        """The stage ended (done, failed or interrupted)."""


class LogProgress:
    """Progress as log lines: rows done of total, rate and time left."""

    __slots__ = ("_done", "_interval", "_last", "_start", "_started", "_title", "_total")

    def __init__(self, title: str, total: int | None, done: int, interval: float) -> None:
        self._title = title
        self._total = total
        self._done = done
        self._start = done
        self._interval = interval
        self._started = self._last = time.monotonic()

    def advance(self, rows: int) -> None:
        self._done += rows
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            logger.info("%s", self._line(now))

    def close(self) -> None:
        logger.info("%s (stage ended)", self._line(time.monotonic()))

    def _line(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = (self._done - self._start) / elapsed
        total = "?" if self._total is None else f"{self._total:,}"
        line = f"{self._title}: {self._done:,}/{total} rows, {rate:,.0f} rows/s"
        if self._total is not None and rate > 0:
            line += f", {max(self._total - self._done, 0) / rate:,.0f} s left"
        return line


class _TqdmProgress:
    __slots__ = ("_bar",)

    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def advance(self, rows: int) -> None:
        self._bar.update(rows)

    def close(self) -> None:
        self._bar.close()


def open_progress(title: str, total: int | None, done: int, *, bar: bool | None = None) -> Progress:
    """A progress display for one stage: a bar when ``bar`` (default: stderr is a terminal)
    and tqdm is installed, log lines otherwise."""
    if bar is None:
        bar = sys.stderr.isatty()
    if bar:
        try:
            from tqdm import tqdm  # the optional ``progress`` extra, imported only when drawn
        except ImportError:
            pass
        else:
            return _TqdmProgress(
                tqdm(
                    total=total,
                    initial=done,
                    desc=title,
                    unit="row",
                    unit_scale=True,
                    mininterval=0.1,
                    file=sys.stderr,
                )
            )
    interval = float(os.environ.get("HOOKBUS_PROGRESS_INTERVAL", "5"))
    return LogProgress(title, total, done, interval)
