"""The SQL text the store sends, built once per entity type and column set, then reused.

Only identifiers from the validated schema go into the text, double-quoted; every value is
a parameter. Reusing the very same text lets asyncpg reuse its prepared statement.
"""

from __future__ import annotations

from typing import Final, final

from ._schema import EID_SEQUENCE, ENTITIES_TABLE, EntityType, RelationType
from ._tables import quote

__all__ = [
    "ALLOCATE_EIDS",
    "DELETE_ENTITY",
    "LOOKUP_ETYPES",
    "SEQUENCE_OID",
    "XID",
    "EntityStatements",
    "RelationStatements",
]

#: ``n`` fresh eids from the sequence, as one array (cheaper to decode than ``n`` rows).
ALLOCATE_EIDS: Final = (
    f"SELECT array_agg(nextval('{EID_SEQUENCE}')) FROM generate_series(1, $1::int)"
)
#: The entity type of each eid given that exists.
LOOKUP_ETYPES: Final = f"SELECT eid, etype FROM {ENTITIES_TABLE} WHERE eid = ANY($1::bigint[])"
DELETE_ENTITY: Final = f"DELETE FROM {ENTITIES_TABLE} WHERE eid = $1 RETURNING eid"
#: The transaction's id, as a write returns it for the scope (its first write assigns it).
XID: Final = "pg_current_xact_id()::text"
#: The eid sequence as the session's search_path resolves it.
SEQUENCE_OID: Final = f"'{EID_SEQUENCE}'::regclass::oid"


@final
class EntityStatements:
    """The statements on one entity type's table; the variable ones cached by column set."""

    __slots__ = (
        "_inserts",
        "_loads",
        "_updates",
        "copy",
        "copy_entities",
        "returning",
        "select",
        "select_for_delete",
        "select_for_update",
        "table",
    )

    def __init__(self, etype: EntityType) -> None:
        self.table = quote(etype.table)
        columns = ", ".join(["eid", *map(quote, etype.columns)])
        #: Every column, eid first: the order the store reads rows in.
        self.returning = columns
        self.select = f"SELECT {columns} FROM {self.table} WHERE eid = $1"
        self.select_for_update = self.select + " FOR UPDATE"
        # Locks the entity's row in the entities table as well: a relation to it added by a
        # concurrent transaction (its foreign key check takes FOR KEY SHARE on that row) waits
        # for the delete, and then fails, instead of being cascaded away without an event.
        self.select_for_delete = (
            f"SELECT {_prefixed(columns)} FROM {self.table} t "
            f"JOIN {ENTITIES_TABLE} e ON e.eid = t.eid WHERE t.eid = $1 FOR UPDATE"
        )
        # COPY goes through asyncpg's copy_records_to_table; this text is what the query
        # events show for it.
        self.copy = f"COPY {self.table} ({columns}) FROM STDIN (FORMAT binary)"
        self.copy_entities = f"COPY {ENTITIES_TABLE} (eid, etype) FROM STDIN (FORMAT binary)"
        self._inserts: dict[tuple[str, ...], str] = {}
        self._updates: dict[tuple[str, ...], str] = {}
        self._loads: dict[tuple[tuple[str, bool], ...], str] = {}

    def insert(self, columns: tuple[str, ...]) -> str:
        """Insert into the entities table and this one, in one statement.

        Parameters: ``$1`` the eid, ``$2`` the entity type, then the values of ``columns``.
        The row comes back with the OID of the eid sequence the session's ``search_path``
        resolves (the store checks that its eid came from that sequence), then, last, the
        transaction's id (``XID``: the scope's COMMIT then needs to carry none).
        """
        sql = self._inserts.get(columns)
        if sql is None:
            names = "".join(", " + quote(c) for c in columns)
            params = "".join(f", ${i}" for i in range(3, len(columns) + 3))
            sql = self._inserts[columns] = (
                f"WITH e AS (INSERT INTO {ENTITIES_TABLE} (eid, etype) VALUES ($1, $2)) "
                f"INSERT INTO {self.table} (eid{names}) VALUES ($1{params}) "
                f"RETURNING {self.returning}, {SEQUENCE_OID}, {XID}"
            )
        return sql

    def update(self, columns: tuple[str, ...]) -> str:
        """Update ``columns`` of one row: ``$1`` the eid, then the values."""
        sql = self._updates.get(columns)
        if sql is None:
            sets = ", ".join(f"{quote(c)} = ${i}" for i, c in enumerate(columns, 2))
            sql = self._updates[columns] = (
                f"UPDATE {self.table} SET {sets} WHERE eid = $1 RETURNING {self.returning}"
            )
        return sql

    def load(self, filters: tuple[tuple[str, bool], ...]) -> str:
        """Select the rows whose columns equal the parameters, ``IS NULL`` where flagged."""
        sql = self._loads.get(filters)
        if sql is None:
            tests: list[str] = []
            n = 0  # IS NULL tests take no parameter: the others are numbered densely
            for column, is_null in filters:
                name = "eid" if column == "eid" else quote(column)
                if is_null:
                    tests.append(f"{name} IS NULL")
                else:
                    n += 1
                    tests.append(f"{name} = ${n}")
            where = " WHERE " + " AND ".join(tests) if tests else ""
            sql = self._loads[filters] = (
                f"SELECT {self.returning} FROM {self.table}{where} ORDER BY eid"
            )
        return sql


@final
class RelationStatements:
    """The statements on one relation type's table."""

    __slots__ = (
        "check",
        "delete",
        "delete_touching",
        "insert",
        "missing_object",
        "missing_subject",
        "objects",
        "subjects",
        "touching",
    )

    def __init__(self, rtype: RelationType, subject: EntityType, object: EntityType) -> None:
        table = quote(rtype.table)
        self.insert = (
            f"INSERT INTO {table} (eid_from, eid_to) VALUES ($1, $2) RETURNING eid_from, {XID}"
        )
        self.check = f"SELECT 1 FROM {table} WHERE eid_from = $1 AND eid_to = $2 FOR UPDATE"
        self.delete = f"DELETE FROM {table} WHERE eid_from = $1 AND eid_to = $2 RETURNING eid_from"
        # The rows of one entity, in either role: what its delete removes first.
        touching = "WHERE eid_from = $1 OR eid_to = $1"
        self.touching = (
            f"SELECT eid_from, eid_to FROM {table} {touching} ORDER BY eid_from, eid_to FOR UPDATE"
        )
        self.delete_touching = f"DELETE FROM {table} {touching} RETURNING eid_from, eid_to"
        objects, subjects = EntityStatements(object), EntityStatements(subject)
        self.objects = (
            f"SELECT {_prefixed(objects.returning)} FROM {objects.table} t "
            f"JOIN {table} r ON r.eid_to = t.eid WHERE r.eid_from = $1 ORDER BY t.eid"
        )
        self.subjects = (
            f"SELECT {_prefixed(subjects.returning)} FROM {subjects.table} t "
            f"JOIN {table} r ON r.eid_from = t.eid WHERE r.eid_to = $1 ORDER BY t.eid"
        )
        # The eids among $1 with no relation on one side: "at least one" cardinality.
        self.missing_object = (
            f"SELECT e FROM unnest($1::bigint[]) e "
            f"WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE eid_from = e)"
        )
        self.missing_subject = (
            f"SELECT e FROM unnest($1::bigint[]) e "
            f"WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE eid_to = e)"
        )


def _prefixed(columns: str) -> str:
    return ", ".join("t." + column for column in columns.split(", "))
