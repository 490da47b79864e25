"""The tables of plugin state and migration progress, and the rows of the plugin table.

``hookbus_plugin``  one row per plugin: the installed version (NULL until an install
                    commits), the version being installed or upgraded to, the state, times,
                    the last error.
``hookbus_stage``   one row per stage of a migration (plugin, version, stage): status,
                    cursor of a batched stage, rows, batches, duration, error.
``hookbus_batch``   one row per batch committed (and per batch attempt that failed): the
                    lock token of the migrator that ran it, its interval by the server's
                    clock (``started_at`` to ``committed_at``).
``hookbus_error``   every failure's error with its time: a stage's, a batch's, a plugin's.
``hookbus_hook_run`` one row per run of a lifecycle hook: status, interval, duration, error.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, Literal, final

import msgspec

from hookbus import HookbusError, Migration, Stage, StageContext

__all__ = [
    "BASE_VERSION",
    "MOVES",
    "OWN",
    "OWN_MIGRATIONS",
    "OWN_VERSION",
    "PLUGIN_STATES",
    "PluginState",
    "PluginStateError",
    "create_tables",
    "read_states",
    "tables_exist",
    "write_state",
]

PluginStateName = Literal["installing", "installed", "upgrading", "failed", "uninstalled"]
PLUGIN_STATES: Final = ("installing", "installed", "upgrading", "failed", "uninstalled")

#: The moves of a plugin's state machine (None: no row yet). Installing and upgrading may be
#: entered again: a migrator killed during them left the row so.
MOVES: Final[dict[str | None, frozenset[str]]] = {
    None: frozenset({"installing"}),
    "installing": frozenset({"installing", "installed", "failed"}),
    "installed": frozenset({"upgrading", "uninstalled"}),
    "upgrading": frozenset({"upgrading", "installed", "failed"}),
    "failed": frozenset({"installing", "upgrading", "uninstalled"}),
    "uninstalled": frozenset({"installing"}),
}


class PluginStateError(HookbusError):
    """The plugins' state forbids what was asked (uninstalling a required plugin...)."""


_DDL: Final = """
CREATE TABLE IF NOT EXISTS hookbus_plugin (
    name text PRIMARY KEY,
    version text,
    target_version text NOT NULL,
    state text NOT NULL CHECK (state IN
        ('installing', 'installed', 'upgrading', 'failed', 'uninstalled')),
    requires text[] NOT NULL DEFAULT '{}',
    installed_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    error text
);
CREATE TABLE IF NOT EXISTS hookbus_stage (
    plugin text NOT NULL,
    version text NOT NULL,
    stage text NOT NULL,
    position integer NOT NULL,
    kind text NOT NULL CHECK (kind IN ('atomic', 'batched')),
    status text NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'skipped',
                                           'undone')),
    cursor text,
    rows bigint NOT NULL DEFAULT 0,
    total bigint,
    batches integer NOT NULL DEFAULT 0,
    duration double precision NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    error text,
    PRIMARY KEY (plugin, version, stage)
);
CREATE TABLE IF NOT EXISTS hookbus_batch (
    id bigserial PRIMARY KEY,
    plugin text NOT NULL,
    version text NOT NULL,
    stage text NOT NULL,
    number integer NOT NULL,
    after_key text,
    last_key text,
    rows integer NOT NULL,
    status text NOT NULL CHECK (status IN ('completed', 'failed', 'undone')),
    duration double precision NOT NULL,
    error text,
    at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (plugin, version, stage) REFERENCES hookbus_stage ON DELETE CASCADE
);
CREATE UNIQUE INDEX IF NOT EXISTS hookbus_batch_done
    ON hookbus_batch (plugin, version, stage, number) WHERE status = 'completed';
"""
#: hookbus's own tables are migrated the way a plugin's are: as the plugin ``hookbus``,
#: recorded in ``hookbus_plugin`` and ``hookbus_stage`` like any other. ``create_tables``
#: makes the layout of version 1.0 (hookbus before fenced batches, commit 92abf95); the
#: migrations of ``OWN_MIGRATIONS`` bring it to ``OWN_VERSION``.
OWN: Final = "hookbus"
BASE_VERSION: Final = "1.0"

# 2.0: each batch's lock token and its interval by the server's clock, the rows of its page
# it changed; every failure's error; every run of a lifecycle hook.
_LAYOUT_2_0: Final = """
ALTER TABLE hookbus_batch ADD COLUMN IF NOT EXISTS token bigint,
                          ADD COLUMN IF NOT EXISTS started_at timestamptz,
                          ADD COLUMN IF NOT EXISTS committed_at timestamptz,
                          ADD COLUMN IF NOT EXISTS touched integer;
CREATE TABLE IF NOT EXISTS hookbus_error (
    id bigserial PRIMARY KEY,
    plugin text NOT NULL,
    version text,
    step text NOT NULL,
    token bigint,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    error text NOT NULL
);
CREATE INDEX IF NOT EXISTS hookbus_error_step ON hookbus_error (plugin, version, step);
CREATE TABLE IF NOT EXISTS hookbus_hook_run (
    id bigserial PRIMARY KEY,
    plugin text NOT NULL,
    version text,
    hook text NOT NULL CHECK (hook IN ('pre_init', 'post_init', 'post_upgrade', 'uninstall')),
    status text NOT NULL CHECK (status IN ('completed', 'failed')),
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    duration double precision NOT NULL,
    error text,
    token bigint
);
"""

_EXIST: Final = "SELECT to_regclass('hookbus_plugin') IS NOT NULL"
_READ: Final = (
    "SELECT name, version, target_version, state, requires, installed_at, updated_at, error "
    "FROM hookbus_plugin ORDER BY name"
)
_WRITE: Final = """
INSERT INTO hookbus_plugin AS p (name, version, target_version, state, requires,
                                 installed_at, error)
VALUES ($1, $2, $3, $4, $5, CASE WHEN $4 = 'installed' THEN now() END, $6)
ON CONFLICT (name) DO UPDATE SET
    version = EXCLUDED.version, target_version = EXCLUDED.target_version,
    state = EXCLUDED.state, requires = EXCLUDED.requires, error = EXCLUDED.error,
    installed_at = COALESCE(EXCLUDED.installed_at, p.installed_at), updated_at = now()
WHERE p.state = $7
"""


@final
class PluginState(msgspec.Struct, frozen=True):
    """A row of ``hookbus_plugin``: what the database says of one plugin."""

    name: str
    version: str | None  # installed version; None until an install commits
    target_version: str
    state: PluginStateName
    requires: tuple[str, ...]
    installed_at: datetime | None
    updated_at: datetime
    error: str | None

    @property
    def is_installed(self) -> bool:
        """Whether the plugin's data is in place (installed, or being upgraded)."""
        return self.version is not None and self.state != "uninstalled"


async def _layout_2_0(ctx: StageContext) -> None:
    await ctx.tx.connection.execute(_LAYOUT_2_0)


OWN_MIGRATIONS: Final = (
    Migration("2.0", [Stage("batch intervals, error history, hook runs", _layout_2_0)]),
)
OWN_VERSION: Final = OWN_MIGRATIONS[-1].version


async def create_tables(conn: Any) -> None:
    """Create the tables of layout 1.0 if they are missing (run under the migration lock);
    ``OWN_MIGRATIONS`` take them further."""
    await conn.execute(_DDL)


async def tables_exist(conn: Any) -> bool:
    """Whether the plugin tables were created on this database."""
    return bool(await conn.fetchval(_EXIST))


async def read_states(conn: Any, *, own: bool = False) -> dict[str, PluginState]:
    """Every plugin row, by name (empty before the tables exist); hookbus's own row with
    ``own``."""
    if not await tables_exist(conn):
        return {}
    rows = [row for row in await conn.fetch(_READ) if own or row["name"] != OWN]
    return {
        row["name"]: PluginState(
            row["name"],
            row["version"],
            row["target_version"],
            row["state"],
            tuple(row["requires"]),
            row["installed_at"],
            row["updated_at"],
            row["error"],
        )
        for row in rows
    }


async def write_state(
    conn: Any,
    name: str,
    *,
    was: PluginStateName | None,
    version: str | None,
    target: str,
    state: PluginStateName,
    requires: Sequence[str],
    error: str | None = None,
) -> None:
    """Move the plugin's row from ``was`` to ``state``, in the transaction ``conn`` is in.

    A move that ``MOVES`` does not allow, or a row no longer in state ``was`` (changed by
    someone else meanwhile), raises ``PluginStateError``.
    """
    if state not in MOVES[was]:
        raise PluginStateError(f"plugin {name!r} cannot move from {was or 'no state'} to {state}")
    status = await conn.execute(_WRITE, name, version, target, state, list(requires), error, was)
    if status != "INSERT 0 1":
        raise PluginStateError(f"plugin {name!r} is no longer {was}: changed meanwhile")
