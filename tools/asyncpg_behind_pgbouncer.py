"""A pytest plugin for running the suite behind pgbouncer in transaction pooling mode.

pgbouncer 1.18 (Debian 12's) does not carry asyncpg's named prepared statements from one
server connection to another, so every connection the tests open (``asyncpg.connect`` and the
pools, which call it) gets ``statement_cache_size=0`` by default: asyncpg then prepares each
statement unnamed. A DSN cannot carry it (asyncpg sends unknown DSN parameters to the server
as settings). Loaded by ``tools/pgbouncer.sh`` (``-p asyncpg_behind_pgbouncer``).
"""

from __future__ import annotations

import asyncpg.connection

asyncpg.connection.connect.__kwdefaults__["statement_cache_size"] = 0
