"""What the store knows of each database between calls: unused eids, and the type of eids seen.

Those are facts of the data, so they are keyed by what identifies the data: the server (its
start time), the database, and the eid sequence as the connection's ``search_path``
resolves it (its OID). Two schemas of one database (tenants chosen by ``search_path``) are
two sets of data: they never share eids or types. Each connection is asked once, the first
time the store uses it, in one catalog read; the answer is kept until the connection
closes. So a connection's ``search_path`` is set when it is made (``server_settings`` of
the pool) or before the store first uses it, not changed after.

An eid's type never changes and eids are never reused, so a cached type is never wrong;
whether the entity still exists is always asked of the table itself.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Final, final

from ._schema import EID_SEQUENCE, ENTITIES_TABLE, EntityType, SchemaMismatchError

__all__ = ["Database", "Databases"]

# The type cache is dropped whole past this many eids: simple, and a miss costs one lookup.
_CACHE_LIMIT: Final = 1 << 20
_IDENTIFY: Final = (
    "SELECT pg_postmaster_start_time(), current_database(), "
    f"to_regclass('{EID_SEQUENCE}')::oid, to_regclass('{ENTITIES_TABLE}')::oid, "
    "current_setting('search_path')"
)


@final
class Database:
    """Per set of data: unused eids (``free``, descending) and known entity types by eid."""

    __slots__ = ("free", "kinds")

    def __init__(self) -> None:
        self.free: list[int] = []
        self.kinds: dict[int, EntityType] = {}

    def know(self, eid: int, kind: EntityType) -> None:
        """Remember that ``eid`` is a ``kind``."""
        kinds = self.kinds
        if len(kinds) >= _CACHE_LIMIT:
            kinds.clear()
        kinds[eid] = kind


@final
class Databases:
    """The :class:`Database` each connection works on, found once per connection."""

    __slots__ = ("_by_connection", "_by_identity", "_listening")

    def __init__(self) -> None:
        # Keyed by the connection's settings object: asyncpg's public handle on one server
        # session, the same through every pool proxy of that connection.
        self._by_connection: dict[object, Database] = {}
        self._by_identity: dict[Hashable, Database] = {}
        self._listening: set[object] = set()  # connections that tell us when they close

    async def of(self, conn: Any) -> Database:
        """The data ``conn`` works on; ``SchemaMismatchError`` if it has no store tables."""
        session = conn.get_settings()
        found = self._by_connection.get(session)
        if found is not None:
            return found
        started, database, sequence, table, path = await conn.fetchrow(_IDENTIFY)
        if sequence is None or table is None:
            raise SchemaMismatchError(
                f"no {ENTITIES_TABLE} table or {EID_SEQUENCE} sequence on this connection's "
                f"search_path ({path}) of database {database!r}: create them with "
                f"`await store.create_tables(pool)` first"
            )
        db = self._by_identity.setdefault((started, database, sequence), Database())
        self._by_connection[session] = db
        if session not in self._listening:
            self._listening.add(session)

            def forget(_: object) -> None:
                self._by_connection.pop(session, None)
                self._listening.discard(session)

            conn.add_termination_listener(forget)
        return db

    def forget_connections(self) -> None:
        """Ask every connection again: the tables may have been made anew (create_tables)."""
        self._by_connection.clear()
