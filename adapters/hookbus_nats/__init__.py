"""hookbus over NATS JetStream: committed outbox rows published by a relay, and consumers
that apply each one once.

>>> relay = hookbus_nats.Relay(dsn, nc.jetstream(), stream="SHOP")  # doctest: +SKIP
>>> await relay.run()  # doctest: +SKIP
>>> consumer = hookbus_nats.Consumer(bus, pool, js, name="totals", stream="SHOP")  # doctest: +SKIP
>>> await consumer.run()  # doctest: +SKIP

The writer side (``hookbus_asyncpg.Outbox``) imports no NATS; this package publishes what it
wrote (see docs/outbox.md). A :class:`Consumer` pulls a stream's messages, decodes them into
the events its bus declares, runs the hooks in a PostgreSQL transaction that records each
message id in ``hookbus_inbox`` (so a redelivery is a no-op), and acknowledges after COMMIT;
what it cannot apply goes to a dead-letter stream with its reason, to be listed and replayed
(``hookbus dead-letters``; see docs/consumers.md).
"""

from __future__ import annotations

from ._consumer import Consumer
from ._consumer_decode import WIRE_VERSIONS, Decoded, EventDecoder, Undecodable
from ._consumer_state import ConsumerError, ConsumerState, ConsumerStatistics
from ._dead_letters import (
    DEAD_LETTER_PREFIX,
    DEAD_LETTER_STREAM,
    DeadLetter,
    DeadReason,
    ReplayedDeadLetter,
    StoredDeadLetter,
    dead_letter_subject,
    ensure_dead_letter_stream,
    list_dead_letters,
    publish_dead_letter,
    replay_dead_letters,
)
from ._inbox import INBOX_TABLE, cleanup_inbox, create_inbox, inbox_plugin, record_applied
from ._relay import Relay, RelayStats
from ._relay_errors import CursorAheadError, DuplicateWindowError, RelayError
from ._relay_sql import Cursor, Holdback, OutboxStatus
from ._relay_state import RelayState, RelayStateError

__all__ = [
    "Consumer",
    "ConsumerError",
    "ConsumerState",
    "ConsumerStatistics",
    "Cursor",
    "CursorAheadError",
    "DEAD_LETTER_PREFIX",
    "DEAD_LETTER_STREAM",
    "DeadLetter",
    "DeadReason",
    "Decoded",
    "DuplicateWindowError",
    "EventDecoder",
    "Holdback",
    "INBOX_TABLE",
    "OutboxStatus",
    "Relay",
    "RelayError",
    "RelayState",
    "RelayStateError",
    "RelayStats",
    "ReplayedDeadLetter",
    "StoredDeadLetter",
    "Undecodable",
    "WIRE_VERSIONS",
    "cleanup_inbox",
    "create_inbox",
    "dead_letter_subject",
    "ensure_dead_letter_stream",
    "inbox_plugin",
    "list_dead_letters",
    "publish_dead_letter",
    "record_applied",
    "replay_dead_letters",
]
