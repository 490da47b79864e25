"""hookbus over NATS JetStream: consumers that apply committed events once.

A :class:`Consumer` pulls a stream's messages, decodes them into the events its bus declares,
runs the hooks in a PostgreSQL transaction that records each message id in ``hookbus_inbox``
(so a redelivery is a no-op), and acknowledges after COMMIT; what it cannot apply goes to a
dead-letter stream with its reason, to be listed and replayed (``hookbus dead-letters``).
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

__all__ = [
    "Consumer",
    "ConsumerError",
    "ConsumerState",
    "ConsumerStatistics",
    "DEAD_LETTER_PREFIX",
    "DEAD_LETTER_STREAM",
    "DeadLetter",
    "DeadReason",
    "Decoded",
    "EventDecoder",
    "INBOX_TABLE",
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
