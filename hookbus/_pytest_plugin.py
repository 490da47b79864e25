"""The pytest plugin of hookbus's core, loaded through the ``pytest11`` entry point
``hookbus``: the fixtures that need no database (the asyncpg adapter's plugin,
``hookbus_asyncpg``, has the database ones).

Fixtures:

``hookbus_recorder``
    a factory: ``events = hookbus_recorder(bus)`` records what ``bus`` emits until the end
    of the test (``hookbus.testing.EventRecorder``).
``hookbus_capture``
    ``hookbus.testing.capture_operations`` (an async context manager).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ._bus import Bus
from .testing import EventRecorder, capture_operations

__all__ = ["hookbus_capture", "hookbus_recorder"]


@pytest.fixture
def hookbus_recorder() -> Iterator[Callable[[Bus], EventRecorder]]:
    """A factory: ``events = hookbus_recorder(bus)`` records ``bus`` until the test ends."""
    recorders: list[EventRecorder] = []

    def record(bus: Bus) -> EventRecorder:
        recorder = EventRecorder(bus)
        recorder.start()
        recorders.append(recorder)
        return recorder

    yield record
    for recorder in reversed(recorders):
        recorder.stop()


@pytest.fixture
def hookbus_capture() -> Callable[..., Any]:
    """``hookbus.testing.capture_operations``: ``async with hookbus_capture(execute=True):``."""
    return capture_operations
