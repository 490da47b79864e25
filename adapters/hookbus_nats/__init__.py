"""hookbus over NATS JetStream: committed outbox rows published by a relay.

>>> relay = hookbus_nats.Relay(dsn, nc.jetstream(), stream="SHOP")  # doctest: +SKIP
>>> await relay.run()  # doctest: +SKIP

The writer side (``hookbus_asyncpg.Outbox``) imports no NATS; this package publishes what it
wrote. See docs/outbox.md.
"""

from __future__ import annotations

from ._relay import Relay, RelayStats
from ._relay_errors import CursorAheadError, DuplicateWindowError, RelayError
from ._relay_sql import Cursor, Holdback, OutboxStatus
from ._relay_state import RelayState, RelayStateError

__all__ = [
    "Cursor",
    "CursorAheadError",
    "DuplicateWindowError",
    "Holdback",
    "OutboxStatus",
    "Relay",
    "RelayError",
    "RelayState",
    "RelayStateError",
    "RelayStats",
]
