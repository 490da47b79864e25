"""The tables of a schema: created where missing, checked where they exist.

Identifiers come only from a validated :class:`Schema`; they are double-quoted anyway, so
that a name is read exactly as declared. Defaults are applied by the store, not by the
table (a DDL default would be a literal in SQL).
"""

from __future__ import annotations

from typing import Any, Final

from ._schema import (
    EID_SEQUENCE,
    ENTITIES_TABLE,
    EntityType,
    RelationType,
    Schema,
    SchemaMismatchError,
)

__all__ = ["create_tables", "quote"]

# One column: (name, SQL type as format_type() spells it, NOT NULL)
Column = tuple[str, str, bool]

_COLUMNS: Final = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY($1::text[])
  AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.relname, a.attnum
"""
_UNIQUES: Final = """
SELECT c.relname, con.conname
FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY($1::text[])
  AND con.contype IN ('u', 'p')
"""
# Two processes creating the same tables at once would race on CREATE ... IF NOT EXISTS.
_LOCK: Final = "SELECT pg_advisory_xact_lock(hashtext('hookbus_asyncpg.create_tables'))"


def quote(identifier: str) -> str:
    """Double-quote a name taken from the validated schema."""
    return '"' + identifier + '"'


def _entity_columns(etype: EntityType) -> list[Column]:
    return [("eid", "bigint", True)] + [
        (attr, spec.sql_type, spec.required) for attr, spec in etype.attributes.items()
    ]


_RELATION_COLUMNS: Final[list[Column]] = [("eid_from", "bigint", True), ("eid_to", "bigint", True)]


def _entity_uniques(etype: EntityType) -> set[str]:
    return {f"{etype.table}_pkey"} | {f"{etype.table}_{attr}_key" for attr in etype.unique}


def _relation_uniques(rtype: RelationType) -> set[str]:
    names = {f"{rtype.table}_pkey"}
    if rtype.single_object:
        names.add(f"{rtype.table}_eid_from_key")
    if rtype.single_subject:
        names.add(f"{rtype.table}_eid_to_key")
    return names


def _create_entity(etype: EntityType) -> list[str]:
    table = quote(etype.table)
    lines = [
        f"eid bigint PRIMARY KEY REFERENCES {ENTITIES_TABLE} (eid) ON DELETE CASCADE",
        *(
            f"{quote(attr)} {spec.sql_type}{' NOT NULL' if spec.required else ''}"
            for attr, spec in etype.attributes.items()
        ),
        *(
            f"CONSTRAINT {quote(f'{etype.table}_{attr}_key')} UNIQUE ({quote(attr)})"
            for attr in etype.unique
        ),
    ]
    return [f"CREATE TABLE {table} (\n    " + ",\n    ".join(lines) + "\n)"]


def _create_relation(rtype: RelationType) -> list[str]:
    table = rtype.table
    # Store.delete removes an entity's relation rows itself, with their events, before the
    # entity's row; the cascade only backs that up.
    ref = f"bigint NOT NULL REFERENCES {ENTITIES_TABLE} (eid) ON DELETE CASCADE"
    lines = [f"eid_from {ref}", f"eid_to {ref}", "PRIMARY KEY (eid_from, eid_to)"]
    # "At most one" sides are UNIQUE: the database enforces what the store checks.
    if rtype.single_object:
        lines.append(f"CONSTRAINT {quote(table + '_eid_from_key')} UNIQUE (eid_from)")
    if rtype.single_subject:
        lines.append(f"CONSTRAINT {quote(table + '_eid_to_key')} UNIQUE (eid_to)")
    statements = [f"CREATE TABLE {quote(table)} (\n    " + ",\n    ".join(lines) + "\n)"]
    if not rtype.single_subject:  # the reverse lookups (related(..., role="object"))
        statements.append(f"CREATE INDEX {quote(table + '_eid_to_idx')} ON {quote(table)} (eid_to)")
    return statements


def expected(schema: Schema) -> dict[str, tuple[list[Column], set[str], list[str]]]:
    """Every table of ``schema``: its columns, its unique constraints, its DDL."""
    tables = {
        ENTITIES_TABLE: (
            [("eid", "bigint", True), ("etype", "text", True)],
            {f"{ENTITIES_TABLE}_pkey"},
            [f"CREATE TABLE {ENTITIES_TABLE} (eid bigint PRIMARY KEY, etype text NOT NULL)"],
        )
    }
    for etype in schema.entities.values():
        tables[etype.table] = (
            _entity_columns(etype),
            _entity_uniques(etype),
            _create_entity(etype),
        )
    for rtype in schema.relations.values():
        tables[rtype.table] = (_RELATION_COLUMNS, _relation_uniques(rtype), _create_relation(rtype))
    return tables


async def create_tables(conn: Any, schema: Schema) -> list[str]:
    """Create the missing tables of ``schema`` on ``conn``; check the existing ones.

    Returns the names of the tables created. ``SchemaMismatchError`` lists every
    difference between an existing table and the declaration; nothing is created then.
    """
    wanted = expected(schema)
    names = list(wanted)
    await conn.execute(_LOCK)
    found: dict[str, list[Column]] = {}
    for table, column, sql_type, notnull in await conn.fetch(_COLUMNS, names):
        found.setdefault(table, []).append((column, sql_type, notnull))
    uniques: dict[str, set[str]] = {}
    for table, constraint in await conn.fetch(_UNIQUES, names):
        uniques.setdefault(table, set()).add(constraint)
    problems: list[str] = []
    for table, columns in found.items():
        problems += _differences(table, wanted[table][0], columns)
        missing = wanted[table][1] - uniques.get(table, set())
        extra = uniques.get(table, set()) - wanted[table][1]
        if missing:
            problems.append(f"table {table}: no constraint {', '.join(sorted(missing))}")
        if extra:
            problems.append(f"table {table}: undeclared unique {', '.join(sorted(extra))}")
    if problems:
        raise SchemaMismatchError(
            "the tables in the database do not match the declared schema:\n  "
            + "\n  ".join(problems)
        )
    created = [table for table in names if table not in found]
    await conn.execute(f"CREATE SEQUENCE IF NOT EXISTS {EID_SEQUENCE}")
    for table in created:
        for statement in wanted[table][2]:
            await conn.execute(statement)
    return created


def _differences(table: str, wanted: list[Column], found: list[Column]) -> list[str]:
    problems = []
    have = {column[0]: column for column in found}
    for name, sql_type, notnull in wanted:
        column = have.pop(name, None)
        if column is None:
            problems.append(f"table {table}: no column {name} ({sql_type})")
        elif column[1] != sql_type:
            problems.append(f"table {table}: column {name} is {column[1]}, declared {sql_type}")
        elif column[2] != notnull:
            state = "NOT NULL" if column[2] else "nullable"
            problems.append(f"table {table}: column {name} is {state}, declared otherwise")
    problems += [f"table {table}: undeclared column {name}" for name in have]
    return problems
