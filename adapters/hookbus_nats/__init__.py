"""hookbus over NATS JetStream: committed outbox rows published by a relay, and consumers
that apply each one once.

>>> relay = hookbus_nats.Relay(dsn, nc, stream="SHOP")  # doctest: +SKIP
>>> await relay.run()  # doctest: +SKIP
>>> consumer = hookbus_nats.Consumer(bus, pool, nc, name="totals", stream="SHOP")  # doctest: +SKIP
>>> await consumer.run()  # doctest: +SKIP

The writer side (``hookbus_asyncpg.Outbox``) imports no NATS; this package publishes what it
wrote (see docs/outbox.md). A :class:`Consumer` pulls a stream's messages, decodes them into
the events its bus declares, runs the hooks in a PostgreSQL transaction that records each
message id in ``hookbus_inbox`` (so a redelivery is a no-op), and acknowledges after COMMIT;
what it cannot apply goes to a dead-letter stream with its reason, to be listed and replayed
(``hookbus dead-letters``; see docs/consumers.md).

Every public name is imported on first use (PEP 562), so that the ``hookbus`` command's
``--help``, which imports this package's command objects, loads neither nats nor asyncpg.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
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
    from ._relay_errors import CursorAheadError, DuplicateWindowError, RelayError, RelayModeError
    from ._relay_sql import Cursor, Holdback, OutboxStatus
    from ._relay_state import RelayState, RelayStateError
    from ._relay_unordered import UnorderedRelay, UnorderedRelayStats
    from ._startup import JetStreamNotReadyError

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
    "JetStreamNotReadyError",
    "OutboxStatus",
    "Relay",
    "RelayError",
    "RelayModeError",
    "RelayState",
    "RelayStateError",
    "RelayStats",
    "ReplayedDeadLetter",
    "StoredDeadLetter",
    "Undecodable",
    "UnorderedRelay",
    "UnorderedRelayStats",
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

# Where each public name is defined (the imports above, for type checkers, say the same).
_DEFINED_IN: Final = {
    "Consumer": "._consumer",
    "ConsumerError": "._consumer_state",
    "ConsumerState": "._consumer_state",
    "ConsumerStatistics": "._consumer_state",
    "Cursor": "._relay_sql",
    "CursorAheadError": "._relay_errors",
    "DEAD_LETTER_PREFIX": "._dead_letters",
    "DEAD_LETTER_STREAM": "._dead_letters",
    "DeadLetter": "._dead_letters",
    "DeadReason": "._dead_letters",
    "Decoded": "._consumer_decode",
    "DuplicateWindowError": "._relay_errors",
    "EventDecoder": "._consumer_decode",
    "Holdback": "._relay_sql",
    "INBOX_TABLE": "._inbox",
    "JetStreamNotReadyError": "._startup",
    "OutboxStatus": "._relay_sql",
    "Relay": "._relay",
    "RelayError": "._relay_errors",
    "RelayModeError": "._relay_errors",
    "RelayState": "._relay_state",
    "RelayStateError": "._relay_state",
    "RelayStats": "._relay",
    "ReplayedDeadLetter": "._dead_letters",
    "StoredDeadLetter": "._dead_letters",
    "Undecodable": "._consumer_decode",
    "UnorderedRelay": "._relay_unordered",
    "UnorderedRelayStats": "._relay_unordered",
    "WIRE_VERSIONS": "._consumer_decode",
    "cleanup_inbox": "._inbox",
    "create_inbox": "._inbox",
    "dead_letter_subject": "._dead_letters",
    "ensure_dead_letter_stream": "._dead_letters",
    "inbox_plugin": "._inbox",
    "list_dead_letters": "._dead_letters",
    "publish_dead_letter": "._dead_letters",
    "record_applied": "._inbox",
    "replay_dead_letters": "._dead_letters",
}

if not TYPE_CHECKING:  # a type checker sees the imports, and no catch-all attribute

    def __getattr__(name: str) -> Any:
        """Import the public ``name`` on its first use, and keep it."""
        try:
            module = _DEFINED_IN[name]
        except KeyError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
