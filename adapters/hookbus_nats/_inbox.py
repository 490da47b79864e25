"""The consumer's inbox: the message ids a consumer applied, written with the hooks' effects.

A message is applied in a transaction that first inserts ``(consumer, msg_id)`` into
``hookbus_inbox``; a row already there (a redelivery, a relay's re-send past the stream's
duplicate window, a replayed dead letter) makes the message a no-op. The insert of a
redelivery that races the first delivery waits for that transaction and then finds the row:
two consumer processes never both apply one message.

The table belongs to the ``hookbus_inbox`` plugin, which the consuming application lists in
its ``PluginSet`` (``inbox_plugin()``) so that ``hookbus install`` creates it; it is not an
entry point. :func:`create_inbox` does the same by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Final

from hookbus import Plugin, StageContext

__all__ = [
    "INBOX_TABLE",
    "cleanup_inbox",
    "create_inbox",
    "inbox_plugin",
    "is_applied",
    "record_applied",
]

INBOX_TABLE: Final = "hookbus_inbox"

_CREATE: Final = f"""\
CREATE TABLE IF NOT EXISTS {INBOX_TABLE} (
    consumer text NOT NULL,
    msg_id text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (consumer, msg_id)
);
CREATE INDEX IF NOT EXISTS {INBOX_TABLE}_applied_at ON {INBOX_TABLE} (consumer, applied_at)"""

# One statement per batch: the ids that were not there yet come back, in no particular order.
_RECORD: Final = f"""\
INSERT INTO {INBOX_TABLE} (consumer, msg_id) SELECT $1, unnest($2::text[])
ON CONFLICT DO NOTHING RETURNING msg_id"""

# Paged by the index, so that a cleanup after a long outage never holds one huge transaction.
_CLEANUP: Final = f"""\
DELETE FROM {INBOX_TABLE} WHERE ctid IN (
    SELECT ctid FROM {INBOX_TABLE}
    WHERE consumer = $1 AND applied_at < clock_timestamp() - $2::interval LIMIT $3)"""


async def create_inbox(connection: Any) -> None:
    """Create ``hookbus_inbox`` if it is missing (what the plugin's ``pre_init`` runs)."""
    await connection.execute(_CREATE)


async def inbox_exists(connection: Any) -> bool:
    """Whether ``hookbus_inbox`` is there (as an unqualified name: on the search path)."""
    found = await connection.fetchval("SELECT to_regclass($1)", INBOX_TABLE)
    return found is not None


async def record_applied(connection: Any, consumer: str, msg_ids: Sequence[str]) -> set[str]:
    """Record ``msg_ids`` as applied by ``consumer``; return those not recorded before.

    Run it in the transaction that applies them: if that transaction rolls back, so does the
    record. A concurrent transaction recording the same id makes this one wait for its outcome.
    """
    rows = await connection.fetch(_RECORD, consumer, list(msg_ids))
    return {row[0] for row in rows}


async def is_applied(connection: Any, consumer: str, msg_id: str) -> bool:
    """Whether ``consumer`` recorded ``msg_id`` as applied (and that record committed)."""
    found = await connection.fetchval(
        f"SELECT 1 FROM {INBOX_TABLE} WHERE consumer = $1 AND msg_id = $2", consumer, msg_id
    )
    return found is not None


async def cleanup_inbox(
    pool: Any, consumer: str, retention: timedelta, *, batch_size: int = 10_000
) -> int:
    """Delete ``consumer``'s inbox rows older than ``retention``; return how many.

    ``retention`` must be at least as long as the stream keeps messages (and as its duplicate
    window): a message still in the stream, or re-sent by a relay, must find its row.
    """
    deleted = 0
    while True:
        status = await pool.execute(_CLEANUP, consumer, retention, batch_size)
        count = int(status.rsplit(" ", 1)[-1])
        deleted += count
        if count < batch_size:
            return deleted


async def _pre_init(ctx: StageContext) -> None:
    await create_inbox(ctx.tx.connection)


async def _uninstall(ctx: StageContext) -> None:
    await ctx.tx.connection.execute(f"DROP TABLE IF EXISTS {INBOX_TABLE}")


def inbox_plugin() -> Plugin:
    """The plugin that owns ``hookbus_inbox``: list it in the consuming application's
    ``PluginSet`` (hookbus publishes none of its own plugins as entry points).

    >>> plugins = PluginSet(bus, [hookbus_nats.inbox_plugin(), *mine])  # doctest: +SKIP
    """
    return Plugin("hookbus_inbox", "1.0", pre_init=_pre_init, uninstall=_uninstall)
