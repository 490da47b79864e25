"""The outbox's tables and the plugin that creates them (``hookbus install`` runs it).

``hookbus_outbox`` holds the events marked for publication, one row each, written by the
transaction that made them. ``hookbus_outbox_cursor`` holds, per relay name, the position
``(xid, id)`` of the last row an ordered relay published and had acknowledged, and its
count. ``hookbus_outbox_mode`` records which kind of relay runs on the outbox (ordered, or
unordered: several relays marking rows ``sent_at``), so that the two never mix.

Version 1.0 made the tables and cursor; 1.1 (a migration, so ``hookbus migrate`` upgrades an
outbox made at 1.0) adds ``sent_at``, the partial index of the unsent rows the unordered
relays claim from, and the mode.

>>> plugins = hookbus.PluginSet(bus, [hookbus_asyncpg.outbox_plugin(), *mine])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Final

from hookbus import Migration, Plugin, Stage, StageContext

__all__ = [
    "NOTIFY_CHANNEL",
    "OUTBOX_CHANNEL",
    "OUTBOX_DDL",
    "OUTBOX_DDL_1_1",
    "OUTBOX_VERSION",
    "outbox_plugin",
]

#: The channel writers NOTIFY at COMMIT and relays LISTEN on.
OUTBOX_CHANNEL: Final = "hookbus_outbox"
NOTIFY_CHANNEL: Final = OUTBOX_CHANNEL

#: The outbox plugin's version: its layout.
OUTBOX_VERSION: Final = "1.1"

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

# 1.1: the unordered mode. Rows an unordered relay has published get ``sent_at``; it claims
# the unsent ones in id order through the partial index (the sent rows, kept for the
# retention, are not in it). The mode is recorded on a one-row table; an outbox upgraded
# from 1.0 whose ordered relay has run is recorded as ordered.
OUTBOX_DDL_1_1: Final = """\
ALTER TABLE hookbus_outbox ADD COLUMN IF NOT EXISTS sent_at timestamptz;
CREATE INDEX IF NOT EXISTS hookbus_outbox_unsent ON hookbus_outbox (id) WHERE sent_at IS NULL;
CREATE TABLE IF NOT EXISTS hookbus_outbox_mode (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    mode text NOT NULL CHECK (mode IN ('ordered', 'unordered')),
    set_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
INSERT INTO hookbus_outbox_mode (mode)
SELECT 'ordered' WHERE EXISTS (SELECT FROM hookbus_outbox_cursor)
ON CONFLICT DO NOTHING;
"""

_DROP: Final = (
    "DROP TABLE IF EXISTS hookbus_outbox_mode; DROP TABLE hookbus_outbox_cursor; "
    "DROP TABLE hookbus_outbox"
)


async def _create(ctx: StageContext) -> None:
    await ctx.tx.connection.execute(OUTBOX_DDL)
    await ctx.tx.connection.execute(OUTBOX_DDL_1_1)


async def _layout_1_1(ctx: StageContext) -> None:
    await ctx.tx.connection.execute(OUTBOX_DDL_1_1)


async def _drop(ctx: StageContext) -> None:
    conn = ctx.tx.connection
    # Rows past every relay's cursor and not marked sent have not been published: dropping
    # them would lose them.
    unsent = await conn.fetchval(
        "SELECT count(*) FROM hookbus_outbox o WHERE o.sent_at IS NULL AND NOT EXISTS (SELECT "
        "FROM hookbus_outbox_cursor c WHERE (o.xid, o.id) <= (c.xid, c.id))"
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
    them, refused while an event is unpublished. Version 1.1 (the unordered mode) is a
    migration: ``hookbus migrate`` upgrades an outbox installed at 1.0."""
    return Plugin(
        "hookbus_outbox",
        OUTBOX_VERSION,
        pre_init=_create,
        uninstall=_drop,
        migrations=[Migration("1.1", [Stage("unordered mode: sent_at, mode", _layout_1_1)])],
    )
