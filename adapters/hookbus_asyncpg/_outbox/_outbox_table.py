"""The outbox's tables and the plugin that creates them (``hookbus install`` runs it).

``hookbus_outbox`` holds the events marked for publication, one row each, written by the
transaction that made them. ``hookbus_outbox_cursor`` holds, per relay name, the position
``(xid, id)`` of the last row a relay published and had acknowledged, and its count.

>>> plugins = hookbus.PluginSet(bus, [hookbus_asyncpg.outbox_plugin(), *mine])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Final

from hookbus import Plugin, StageContext

__all__ = ["NOTIFY_CHANNEL", "OUTBOX_CHANNEL", "OUTBOX_DDL", "outbox_plugin"]

#: The channel writers NOTIFY at COMMIT and relays LISTEN on.
OUTBOX_CHANNEL: Final = "hookbus_outbox"
NOTIFY_CHANNEL: Final = OUTBOX_CHANNEL

OUTBOX_DDL: Final = """\
CREATE TABLE IF NOT EXISTS hookbus_outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    subject text NOT NULL,
    event text NOT NULL,
    msg_id text NOT NULL UNIQUE DEFAULT gen_random_uuid()::text,
    payload bytea NOT NULL,
    headers jsonb NOT NULL DEFAULT '{}',
    ordering_key text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS hookbus_outbox_xid_id ON hookbus_outbox (xid, id);
CREATE TABLE IF NOT EXISTS hookbus_outbox_cursor (
    relay text PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT '0',
    id bigint NOT NULL DEFAULT 0,
    published bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

_DROP: Final = "DROP TABLE hookbus_outbox_cursor; DROP TABLE hookbus_outbox"


async def _create(ctx: StageContext) -> None:
    await ctx.tx.connection.execute(OUTBOX_DDL)


async def _drop(ctx: StageContext) -> None:
    conn = ctx.tx.connection
    # Rows past every relay's cursor have not been published: dropping them would lose them.
    unsent = await conn.fetchval(
        "SELECT count(*) FROM hookbus_outbox o WHERE NOT EXISTS (SELECT FROM "
        "hookbus_outbox_cursor c WHERE (o.xid, o.id) <= (c.xid, c.id))"
    )
    if unsent:
        raise RuntimeError(
            f"the outbox holds {unsent} unpublished event(s): run the relay until "
            "`hookbus outbox status` shows none pending, then uninstall"
        )
    await conn.execute(_DROP)


def outbox_plugin() -> Plugin:
    """The plugin ``hookbus_outbox``: installing it creates the outbox tables (PostgreSQL 13
    or later: ``xid8``, ``pg_current_xact_id``, ``gen_random_uuid``); uninstalling it drops
    them, refused while an event is unpublished."""
    return Plugin("hookbus_outbox", "1.0", pre_init=_create, uninstall=_drop)
