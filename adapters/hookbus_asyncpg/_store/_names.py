"""The names the schema turns into SQL: checked where they are declared, kept whole by PostgreSQL.

A name is refused when PostgreSQL would read it otherwise than declared, or refuse it later:
not an ASCII identifier, a reserved word, a system column (``xmin``, ``ctid``...), a table
that would resolve into ``pg_catalog`` (``pg_`` prefix), hookbus's own prefix, or any
identifier built from it (``<table>_pkey``, ``<table>_<attr>_key``...) past 63 bytes, which
PostgreSQL would cut short.
"""

from __future__ import annotations

import re
from typing import Final

from hookbus import RegistrationError

__all__ = ["MAX_IDENTIFIER", "MAX_COLUMNS", "check_length", "check_name"]

MAX_IDENTIFIER: Final = 63  # PostgreSQL keeps NAMEDATALEN - 1 bytes of a name
MAX_COLUMNS: Final = 1600  # PostgreSQL's limit of columns per table (eid is one of them)

_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# PostgreSQL's reserved key words (pg_get_keywords() catcode R and T, up to version 17).
_RESERVED: Final = frozenset(
    """all analyse analyze and any array as asc asymmetric authorization binary both case cast
    check collate collation column concurrently constraint create cross current_catalog
    current_date current_role current_schema current_time current_timestamp current_user
    default deferrable desc distinct do else end except false fetch for foreign freeze from
    full grant group having ilike in initially inner intersect into is isnull join lateral
    leading left like limit localtime localtimestamp natural not notnull null offset on only
    or order outer overlaps placing primary references returning right select session_user
    similar some symmetric system_user table tablesample then to trailing true union unique
    user using variadic verbose when where window with""".split()  # noqa: SIM905  (kept readable)
)
# Every table has these columns already: a column of the same name is refused by CREATE TABLE.
_SYSTEM_COLUMNS: Final = frozenset({"tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"})


def check_name(kind: str, name: object, *, lowercase: bool, table: bool) -> str:
    """Refuse a name that cannot be a table (``table``) or column name as is; say why."""
    if not isinstance(name, str):
        raise RegistrationError(f"{kind} name must be a string, not {name!r}")
    for bad, what in (('"', "a double quote"), ("'", "a quote"), (";", "a semicolon")):
        if bad in name:
            raise RegistrationError(f"{kind} name {name!r} contains {what}")
    if not _IDENTIFIER.match(name):
        raise RegistrationError(
            f"{kind} name {name!r} is not an identifier (ASCII letters, digits and "
            f"underscores, not starting with a digit)"
        )
    if lowercase and name != name.lower():
        raise RegistrationError(f"{kind} name {name!r} must be lowercase: {name.lower()!r}")
    folded = name.lower()
    if folded in _RESERVED:
        raise RegistrationError(f"{kind} name {name!r} is a reserved word of SQL")
    if folded.startswith("hookbus_"):
        raise RegistrationError(f"{kind} name {name!r}: the prefix hookbus_ is hookbus's own")
    if table and folded.startswith("pg_"):
        raise RegistrationError(
            f"{kind} name {name!r}: a table named pg_... is looked up in pg_catalog first "
            f"(the prefix pg_ is PostgreSQL's own)"
        )
    if not table and folded in _SYSTEM_COLUMNS:
        raise RegistrationError(
            f"{kind} name {name!r} is a system column of every PostgreSQL table "
            f"({', '.join(sorted(_SYSTEM_COLUMNS))})"
        )
    check_length(folded, f"{kind} {name!r}")
    return name


def check_length(identifier: str, what: str) -> None:
    """Refuse ``identifier`` if PostgreSQL would cut it short (past 63 bytes)."""
    if len(identifier.encode()) > MAX_IDENTIFIER:
        raise RegistrationError(
            f"{what} needs the SQL name {identifier!r}, longer than PostgreSQL's "
            f"{MAX_IDENTIFIER} bytes (it would be cut short): choose a shorter name"
        )
