"""A plugin upgraded by a four-stage migration, one stage batched over 200,000 rows.

The catalog plugin 1.0 installs (``pre_init`` creates its table, ``post_init`` fills it in a
way that depends on the environment and feature flags). Version 2.0 brings the four stages
of Odoo's classic multi-stage migration: the structure (atomic), the relationships (atomic),
the computed fields (batched by key, with a progress bar, validated) and an external sync
that runs only with the ``external_sync`` flag (skipped without it, then run by an upgrade
once the flag is on). Every stage, batch and lifecycle hook is recorded in the database by
the transaction doing it; the monitoring tables are printed at the end.

    .venv/bin/python examples/plugin_migration.py [ROWS]   # default 200,000
    HOOKBUS_ENV=production HOOKBUS_FLAGS=external_sync .venv/bin/python examples/...
"""

from __future__ import annotations

import logging
import sys

import asyncpg
from hookbus_asyncpg import PluginManager
from hookbus_asyncpg.testing import run_with_pool

from hookbus import (
    Batch,
    BatchedStage,
    Bus,
    Environment,
    Migration,
    Plugin,
    PluginSet,
    Stage,
    StageContext,
)

ROWS = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 200_000


async def create_table(ctx: StageContext) -> None:
    """pre_init: the plugin's table, before its hooks exist."""
    await ctx.tx.connection.execute(
        "CREATE TABLE product (id bigint PRIMARY KEY, old_field1 text, old_field2 text, "
        "old_field3 text, kind text)"
    )


async def initialise(ctx: StageContext) -> None:
    """post_init: what the environment calls for (the lesson's conditional hook)."""
    conn, env = ctx.tx.connection, ctx.env
    rows = 1_000 if env.is_production else ROWS  # production: no generated data
    await conn.execute(
        "INSERT INTO product SELECT i, 'p' || i, 'v' || (i % 7), 'r' || (i % 3), "
        "(ARRAY['tool', 'toy', 'food'])[1 + i % 3] FROM generate_series(1, $1) i",
        rows,
    )
    await conn.execute("CREATE TABLE catalog_setting (name text PRIMARY KEY, value text)")
    settings = {"environment": env.name, "demo_data": str(not env.is_production)}
    if env.enabled("external_sync"):
        settings["sync_endpoint"] = "https://sync.example.invalid/catalog"
    await conn.executemany("INSERT INTO catalog_setting VALUES ($1, $2)", settings.items())
    print(f"  post_init in {env}: {rows:,} products, settings {sorted(settings)}")


async def data_structure(ctx: StageContext) -> None:
    """Stage 1: the new columns."""
    await ctx.tx.connection.execute(
        "ALTER TABLE product ADD COLUMN new_field text, ADD COLUMN category_id int"
    )


async def relationships(ctx: StageContext) -> None:
    """Stage 2: categories become rows of their own, products point at them."""
    await ctx.tx.connection.execute(
        "CREATE TABLE category (id serial PRIMARY KEY, name text UNIQUE NOT NULL);"
        "INSERT INTO category (name) SELECT DISTINCT kind FROM product ORDER BY kind;"
        "UPDATE product p SET category_id = c.id FROM category c WHERE c.name = p.kind"
    )


async def computed_fields(batch: Batch) -> None:
    """Stage 3, one batch: the transform of the lesson, in SQL, for keys after < id <= last."""
    await batch.tx.connection.execute(
        "UPDATE product SET new_field = old_field1 || '_' || old_field2 || '_' || old_field3 "
        "WHERE id > $1 AND id <= $2",
        batch.after if batch.after is not None else -1,
        batch.last,
    )


async def computed_fields_complete(ctx: StageContext) -> bool:
    """The lesson's validate_migration: no product left without its computed field."""
    missing = await ctx.tx.connection.fetchval(
        "SELECT count(*) FROM product WHERE new_field IS NULL AND old_field1 IS NOT NULL"
    )
    return missing == 0


async def external_sync(ctx: StageContext) -> None:
    """Stage 4: only where the flag is on."""
    await ctx.tx.connection.execute(
        "INSERT INTO catalog_setting VALUES ('synced', 'yes') ON CONFLICT DO NOTHING"
    )


def catalog(version: str) -> Plugin:
    """The catalog plugin as the code of ``version`` declares it."""
    return Plugin(
        "catalog",
        version,
        requires=["base"],
        pre_init=create_table,
        post_init=initialise,
        migrations=[
            Migration("2.0", [
                Stage("data structure", data_structure),
                Stage("relationships", relationships),
                BatchedStage("computed fields", computed_fields, table="product", key="id",
                             batch_size=5_000, validate=computed_fields_complete,
                             lock_timeout=2, statement_timeout=30),
                Stage("external sync", external_sync,
                      condition=lambda env: env.enabled("external_sync")),
            ]),
        ],
    )  # fmt: skip


def application(version: str, env: Environment) -> PluginSet:
    return PluginSet(Bus(), [catalog(version), Plugin("base", "1.0")], env=env)


async def main(pool: asyncpg.Pool) -> None:
    for name in ("hookbus.plugins", "hookbus.migrations"):  # the migrator's own lines
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter("  %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False
    env = Environment.from_env()
    installed = await PluginManager(pool, application("1.0", env)).install()
    print(f"installed: {installed}")

    manager = PluginManager(pool, application("2.0", env))
    print("the plan of the upgrade to 2.0:")
    for step in await manager.plan():
        print(f"  {step.version} {step.stage:<16} {step.kind:<8} {step.action} {step.detail}")
    print(f"upgraded: {await manager.upgrade()}")
    print("upgraded again, nothing left to do:", await manager.upgrade())
    if not env.enabled("external_sync"):  # skipped is not completed: it runs once it may
        flags = [*env.flags, "external_sync"]
        flagged = PluginManager(pool, application("2.0", Environment(env.name, flags=flags)))
        for step in await flagged.plan():
            print(f"  with external_sync on: {step.stage} {step.action}")
        print(f"upgraded with the flag: {await flagged.upgrade()}")

    print("the monitoring table (hookbus_stage):")
    print(f"  {'stage':<16} {'kind':<8} {'status':<10} {'rows':>9} {'batches':>7} seconds")
    for s in await manager.progress("catalog"):
        print(f"  {s.stage:<16} {s.kind:<8} {s.status:<10} {s.rows:>9,} {s.batches:>7} "
              f"{s.duration:.2f}")  # fmt: skip
    print("the lifecycle hooks (hookbus_hook_run):")
    for run in await manager.hook_runs("catalog"):
        print(f"  {run.hook:<12} {run.version:<4} {run.status:<9} {run.duration:.3f} s")
    for status in await manager.status():
        print(f"plugin {status.name}: {status.state} at {status.installed}")
    sample = await pool.fetchrow("SELECT new_field, category_id FROM product WHERE id = 10")
    print(f"product 10 after the migration: {dict(sample)}")


if __name__ == "__main__":
    run_with_pool(main, "plugin_migration")
