"""The demo: every example, each on a database of its own, saying what its hooks did.

./run demo                       # on the local PostgreSQL, else an embedded one
HOOKBUS_DSN=postgresql://... ./run demo
"""

from __future__ import annotations

import importlib
import time

import asyncpg
from hookbus_asyncpg.testing import run_with_server, throwaway_database

EXAMPLES = (  # each is examples/NAME.py, runnable on its own too
    "person_age",
    "company_boss",
    "subsidiary_cycle",
    "upper_case_names",
    "soft_delete",
    "update_touched_a_row",
    "load_from_cache",
    "rollback_audit",
    "bulk_import",
    "plugin_migration",
)


async def main(server_dsn: str) -> None:
    for name in EXAMPLES:
        module = importlib.import_module(name)
        title = (module.__doc__ or name).strip().splitlines()[0]
        print(f"\n== {name}: {title}")
        started = time.perf_counter()
        async with (
            throwaway_database(server_dsn, name) as dsn,
            asyncpg.create_pool(dsn, min_size=1, max_size=4) as pool,
        ):
            await module.main(pool)
        print(f"   ({time.perf_counter() - started:.2f} s; examples/{name}.py)")


if __name__ == "__main__":
    run_with_server(main)
