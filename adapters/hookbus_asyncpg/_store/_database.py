"""What the store knows of each database between calls: unused eids, and the type of eids seen.

Those are facts of the data, so they are keyed by what identifies the data: the server (its
start time), the database, and the eid sequence as the connection's ``search_path``
resolves it (its OID). Two schemas of one database (tenants chosen by ``search_path``) are
two sets of data: they never share eids or types. Each connection is asked once, the first
time the store uses it, in one catalog read (the store's own bookkeeping: no query event
announces it, as none announces create_tables' statements); the answer is kept until the
connection closes. So a connection's ``search_path`` is set when it is made (``server_settings`` of
the pool, one pool per tenant), not changed after. Where it is changed (``SET LOCAL
search_path`` per scope), the single insert that finds it out fails with a
``SchemaMismatchError`` (its scope doomed: nothing written; its hooks saw an eid of the other
data), and from then on that connection is asked at the start of each scope (one round
trip more per scope on it). ``insert_many`` asks the connection on each call.

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

    __slots__ = ("free", "kinds", "sequence")

    def __init__(self, sequence: int) -> None:
        #: The OID of the eid sequence the eids come from.
        self.sequence = sequence
        self.free: list[int] = []
        self.kinds: dict[int, EntityType] = {}

    def know(self, eid: int, kind: EntityType) -> None:
        """Remember that ``eid`` is a ``kind``."""
        kinds = self.kinds
        if len(kinds) >= _CACHE_LIMIT:
            kinds.clear()
        kinds[eid] = kind

    def know_many(self, eids: list[int], kind: EntityType) -> None:
        """Remember that each of ``eids`` is a ``kind`` (``know`` for a batch)."""
        kinds = self.kinds
        if len(kinds) + len(eids) > _CACHE_LIMIT:
            kinds.clear()
        kinds.update(dict.fromkeys(eids, kind))


@final
class Databases:
    """The :class:`Database` each connection works on, found once per connection."""

    __slots__ = ("_by_connection", "_by_identity", "_listening", "_moving")

    def __init__(self) -> None:
        # Keyed by the connection's settings object: asyncpg's public handle on one server
        # session, the same through every pool proxy of that connection.
        self._by_connection: dict[object, Database] = {}
        self._by_identity: dict[Hashable, Database] = {}
        self._listening: set[object] = set()  # connections that tell us when they close
        self._moving: set[object] = set()  # connections seen to change their search_path

    async def of(self, conn: Any) -> Database:
        """The data ``conn`` works on, asked once per connection (see the module).

        A connection seen to change its search_path is asked at each call instead.
        """
        session = conn.get_settings()
        found = self._by_connection.get(session)
        if found is not None:
            return found
        db = await self.ask(conn)
        if session not in self._moving:
            self._by_connection[session] = db
        if session not in self._listening:
            self._listening.add(session)

            def forget(_: object) -> None:
                self._by_connection.pop(session, None)
                self._listening.discard(session)
                self._moving.discard(session)

            conn.add_termination_listener(forget)
        return db

    async def ask(self, conn: Any) -> Database:
        """The data ``conn`` works on now; ``SchemaMismatchError`` if it has no store tables."""
        started, database, sequence, table, path = await conn.fetchrow(_IDENTIFY)
        if sequence is None or table is None:
            raise SchemaMismatchError(
                f"no {ENTITIES_TABLE} table or {EID_SEQUENCE} sequence on this connection's "
                f"search_path ({path}) of database {database!r}: create them with "
                f"`await store.create_tables(pool)` first"
            )
        db = self._by_identity.get((started, database, sequence))
        if db is None:
            db = self._by_identity[started, database, sequence] = Database(sequence)
        return db

    def moved(self, conn: Any) -> None:
        """``conn``'s search_path changed since it was asked: ask it at each scope from now."""
        session = conn.get_settings()
        self._by_connection.pop(session, None)
        self._moving.add(session)

    def forget_connections(self) -> None:
        """Ask every connection again: the tables may have been made anew (create_tables)."""
        self._by_connection.clear()
