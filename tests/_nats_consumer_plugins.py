"""Applications for ``hookbus install``: hookbus's own plugins are listed, never discovered."""

from __future__ import annotations

import hookbus_asyncpg
import hookbus_nats

from hookbus import Bus, PluginSet


def discovered() -> PluginSet:
    """Lists nothing, takes every installed ``hookbus.plugins`` entry point."""
    return PluginSet(Bus(), [], entry_points=True)


def listed() -> PluginSet:
    """A writer's and a consumer's tables, listed as the docs say."""
    return PluginSet(Bus(), [hookbus_asyncpg.outbox_plugin(), hookbus_nats.inbox_plugin()])
