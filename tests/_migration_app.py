"""The application the migrator subprocesses of tests/test_migration_kill.py run.

``plugins`` is its ``PluginSet``: one plugin, ``counter``, at ``HOOKBUS_TEST_VERSION``
(default 2.0), whose 2.0 migration is a batched stage adding one to ``counted.hits`` of
every row, ``HOOKBUS_TEST_BATCH`` rows a batch (default 200), each batch taking at least
``HOOKBUS_TEST_BATCH_SLEEP`` seconds on the server (default 0).
"""

from __future__ import annotations

import os

from hookbus import Batch, BatchedStage, Bus, Environment, Migration, Plugin, PluginSet

SETUP = """
DROP TABLE IF EXISTS hookbus_batch, hookbus_stage, hookbus_plugin, hookbus_error, hookbus_hook_run,
    counted;
CREATE TABLE counted (id bigint PRIMARY KEY, hits integer NOT NULL DEFAULT 0);
"""
FILL = "INSERT INTO counted (id) SELECT i * 2 FROM generate_series(1, $1) i"


async def count_once(batch: Batch) -> None:
    pause = float(os.environ.get("HOOKBUS_TEST_BATCH_SLEEP", "0"))
    if pause:
        await batch.tx.connection.execute("SELECT pg_sleep($1)", pause)
    if batch.after is None:
        await batch.tx.connection.execute(
            "UPDATE counted SET hits = hits + 1 WHERE id <= $1", batch.last
        )
    else:
        await batch.tx.connection.execute(
            "UPDATE counted SET hits = hits + 1 WHERE id > $1 AND id <= $2",
            batch.after,
            batch.last,
        )


def make(version: str) -> PluginSet:
    """The application's plugins with ``counter`` at ``version``."""
    size = int(os.environ.get("HOOKBUS_TEST_BATCH", "200"))
    counter = Plugin(
        "counter",
        version,
        migrations=[
            Migration("2.0", [BatchedStage("count", count_once, table="counted", batch_size=size)])
        ],
    )
    return PluginSet(Bus(), [counter], env=Environment("test"))


def plugins() -> PluginSet:
    """What ``python -m hookbus migrate _migration_app:plugins`` loads."""
    return make(os.environ.get("HOOKBUS_TEST_VERSION", "2.0"))
