"""The store's schema: entity types with typed attributes, relation types between them.

Every name is checked when it is declared, so that the SQL the store builds from it later
needs no check: a table or column name is an ASCII identifier, not a reserved word of
PostgreSQL, short enough to be kept whole, and unambiguous once lowercased (an entity type
``Person`` lives in the table ``person``, a relation ``boss`` in ``boss_relation``).

>>> schema = Schema(
...     entities=[EntityType("Person", name=Attribute(str, required=True), age=Attribute(int))],
...     relations=[RelationType("knows", "Person", "Person")],
... )
>>> schema.entity("Person").table
'person'
"""

from __future__ import annotations

import datetime
import decimal
import difflib
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final, final

from hookbus import HookbusError, RegistrationError, ValidationError

__all__ = [
    "Attribute",
    "EntityType",
    "RelationType",
    "Schema",
    "SchemaMismatchError",
    "UnknownNameError",
]

#: The table mapping every eid to its entity type, and the sequence eids come from.
ENTITIES_TABLE: Final = "hookbus_entities"
EID_SEQUENCE: Final = "hookbus_eid_seq"

_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MAX_IDENTIFIER: Final = 63  # PostgreSQL cuts longer names short (NAMEDATALEN - 1)
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
_CARDINALITY: Final = frozenset("1?+*")
_INT8_MIN: Final = -(2**63)
_INT8_MAX: Final = 2**63 - 1


class UnknownNameError(HookbusError, LookupError):
    """A name the schema does not declare: an entity type, attribute or relation type."""

    def __init__(self, kind: str, name: object, known: Iterable[str], where: str = "") -> None:
        known = sorted(known)
        close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        listing = ", ".join(known) if known else "none"
        super().__init__(f"unknown {kind} {name!r}{where}{hint} (declared: {listing})")


class SchemaMismatchError(HookbusError):
    """Tables already in the database differ from the declared schema."""


def _check_name(kind: str, name: object, *, lowercase: bool) -> str:
    """Refuse a name that cannot be a table or column name as is; say why."""
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
    if name.lower() in _RESERVED:
        raise RegistrationError(f"{kind} name {name!r} is a reserved word of SQL")
    if name.lower().startswith("hookbus_"):
        raise RegistrationError(f"{kind} name {name!r}: the prefix hookbus_ is hookbus's own")
    return name


def _check_length(identifier: str, what: str) -> None:
    if len(identifier) > _MAX_IDENTIFIER:
        raise RegistrationError(
            f"{what} would need the SQL name {identifier!r}, longer than PostgreSQL's "
            f"{_MAX_IDENTIFIER} characters: choose a shorter name"
        )


# -- attribute types: the SQL type, and the check of a value before it reaches SQL ---------

Checker = Callable[[Any], str | None]  # returns the problem, or None when the value is fine


def _check_int(value: Any) -> str | None:
    if type(value) is bool or not isinstance(value, int):
        return "an int"
    return None if _INT8_MIN <= value <= _INT8_MAX else "an int within 64 bits"


def _check_float(value: Any) -> str | None:
    ok = isinstance(value, float) or (isinstance(value, int) and type(value) is not bool)
    return None if ok else "a float"


def _check_str(value: Any) -> str | None:
    if not isinstance(value, str):
        return "a str"
    return "a str without NUL characters" if "\x00" in value else None


def _instance_of(*types: type, exclude: type | None = None) -> Checker:
    label = f"a {types[0].__qualname__}"

    def check(value: Any) -> str | None:
        if not isinstance(value, types) or (exclude is not None and isinstance(value, exclude)):
            return label
        return None

    return check


_TYPES: Final[Mapping[type, tuple[str, Checker]]] = MappingProxyType(
    {
        str: ("text", _check_str),
        int: ("bigint", _check_int),
        float: ("double precision", _check_float),
        bool: ("boolean", _instance_of(bool)),
        bytes: ("bytea", _instance_of(bytes)),
        decimal.Decimal: ("numeric", _instance_of(decimal.Decimal)),
        datetime.datetime: ("timestamp with time zone", _instance_of(datetime.datetime)),
        datetime.date: ("date", _instance_of(datetime.date, exclude=datetime.datetime)),
        datetime.time: ("time without time zone", _instance_of(datetime.time)),
        uuid.UUID: ("uuid", _instance_of(uuid.UUID)),
    }
)


@final
class Attribute:
    """A typed attribute of an entity type: a column of its table.

    ``type`` is one of ``str``, ``int``, ``float``, ``bool``, ``bytes``, ``Decimal``,
    ``datetime``, ``date``, ``time``, ``UUID``. ``required`` refuses ``None`` and a missing
    value on insert; ``default`` fills a value not given on insert (before the hooks see
    it); ``unique`` adds a UNIQUE constraint, whose violation is a ``ValidationError``.
    """

    __slots__ = ("check", "default", "required", "sql_type", "type", "unique")

    def __init__(
        self, type: type, *, required: bool = False, default: Any = None, unique: bool = False
    ) -> None:
        known = _TYPES.get(type)
        if known is None:
            names = ", ".join(t.__qualname__ for t in _TYPES)
            raise RegistrationError(f"attribute type {type!r} is not supported (one of {names})")
        self.type = type
        self.sql_type, self.check = known
        self.required = bool(required)
        self.default = default
        self.unique = bool(unique)
        if default is not None and self.check(default) is not None:
            raise RegistrationError(f"default {default!r} is not {self.check(default)}")

    def __repr__(self) -> str:
        flags = "".join(f", {flag}=True" for flag in ("required", "unique") if getattr(self, flag))
        default = "" if self.default is None else f", default={self.default!r}"
        return f"Attribute({self.type.__qualname__}{flags}{default})"


@final
class EntityType:
    """An entity type: a name (``Person``) and its attributes, given as keywords.

    Its rows live in the table named after it in lowercase; ``eid`` is the key column.
    """

    __slots__ = ("attributes", "columns", "defaults", "name", "required", "table", "unique")

    def __init__(self, name: str, /, **attributes: Attribute) -> None:
        self.name = _check_name("entity type", name, lowercase=False)
        self.table = name.lower()
        _check_length(self.table, f"entity type {name!r}")
        for attr, spec in attributes.items():
            _check_name(f"{name} attribute", attr, lowercase=True)
            if attr == "eid":
                raise RegistrationError(f"attribute {name}.eid: eid is the store's key column")
            if not isinstance(spec, Attribute):
                raise RegistrationError(f"attribute {name}.{attr} must be an Attribute")
            if spec.unique:
                _check_length(f"{self.table}_{attr}_key", f"unique attribute {name}.{attr}")
        #: Declared attributes, in declaration order (the column order).
        self.attributes: Mapping[str, Attribute] = MappingProxyType(dict(attributes))
        self.columns: tuple[str, ...] = tuple(attributes)
        self.required = frozenset(a for a, s in attributes.items() if s.required)
        self.unique = tuple(a for a, s in attributes.items() if s.unique)
        self.defaults: Mapping[str, Any] = MappingProxyType(
            {a: s.default for a, s in attributes.items() if s.default is not None}
        )

    def __repr__(self) -> str:
        attrs = "".join(f", {a}={s!r}" for a, s in self.attributes.items())
        return f"EntityType({self.name!r}{attrs})"

    def check(self, values: dict[str, Any], eid: Any = None, *, adding: bool) -> None:
        """Check ``values`` (attribute -> value) before they reach SQL.

        An unknown attribute is an ``UnknownNameError``; values of the wrong type, a
        required attribute missing (on add) or set to ``None`` are one ``ValidationError``.
        """
        attributes = self.attributes
        errors: dict[str | None, str] = {}
        for attr, value in values.items():
            spec = attributes.get(attr)
            if spec is None:
                raise UnknownNameError("attribute", attr, self.columns, f" of {self.name}")
            if value is None:
                if spec.required:
                    errors[attr] = f"{self.name}.{attr} is required"
                continue
            wanted = spec.check(value)
            if wanted is not None:
                errors[attr] = f"{self.name}.{attr} must be {wanted}, not {value!r}"
        if adding and not self.required <= values.keys():
            for attr in sorted(self.required - values.keys()):
                errors[attr] = f"{self.name}.{attr} is required"
        if errors:
            raise ValidationError(eid, errors)

    def with_defaults(self, values: dict[str, Any]) -> dict[str, Any]:
        """Add the default of every attribute ``values`` does not set; return ``values``."""
        for attr, default in self.defaults.items():
            if attr not in values:
                values[attr] = default
        return values


@final
class RelationType:
    """A relation type from a subject entity type to an object entity type.

    ``cardinality`` is CubicWeb's two characters, the subject side's then the object
    side's: ``1`` exactly one, ``?`` at most one, ``+`` at least one, ``*`` any number.
    ``"?*"`` on ``boss`` from Company to Person: a company has at most one boss, a person
    may be the boss of any number of companies. "At most" is checked as the relation is
    added; "at least" at precommit, for the entities added or unlinked in the transaction.
    """

    __slots__ = ("cardinality", "name", "object", "subject", "table")

    def __init__(self, name: str, subject: str, object: str, cardinality: str = "**") -> None:
        self.name = _check_name("relation type", name, lowercase=True)
        self.table = f"{name}_relation"
        _check_length(f"{self.table}_eid_from_key", f"relation type {name!r}")
        if not isinstance(subject, str) or not isinstance(object, str):
            raise RegistrationError(f"relation {name!r}: subject and object are type names")
        self.subject = subject
        self.object = object
        if (
            not isinstance(cardinality, str)
            or len(cardinality) != 2
            or not set(cardinality) <= _CARDINALITY
        ):
            raise RegistrationError(
                f"relation {name!r}: cardinality is two of '1?+*' (subject side, then object "
                f"side), not {cardinality!r}"
            )
        self.cardinality = cardinality

    def __repr__(self) -> str:
        return (
            f"RelationType({self.name!r}, {self.subject!r}, {self.object!r}, "
            f"cardinality={self.cardinality!r})"
        )

    @property
    def single_object(self) -> bool:
        """A subject has at most one object (subject side ``1`` or ``?``)."""
        return self.cardinality[0] in "1?"

    @property
    def single_subject(self) -> bool:
        """An object has at most one subject (object side ``1`` or ``?``)."""
        return self.cardinality[1] in "1?"


@final
class Schema:
    """The entity and relation types a :class:`Store` persists.

    Two entity types may not differ only by case (they would share a table), and no two
    types may need the same table.
    """

    __slots__ = ("_entities", "_relations")

    def __init__(
        self, entities: Iterable[EntityType] = (), relations: Iterable[RelationType] = ()
    ) -> None:
        self._entities: dict[str, EntityType] = {}
        self._relations: dict[str, RelationType] = {}
        tables: dict[str, str] = {ENTITIES_TABLE: "hookbus's entities table"}
        for etype in entities:
            if not isinstance(etype, EntityType):
                raise RegistrationError(f"Schema(entities=...) takes EntityType, not {etype!r}")
            if etype.table in tables:
                raise RegistrationError(
                    f"entity type {etype.name!r} needs the table {etype.table!r}, already "
                    f"taken by {tables[etype.table]}"
                )
            tables[etype.table] = f"entity type {etype.name!r}"
            self._entities[etype.name] = etype
        for rtype in relations:
            if not isinstance(rtype, RelationType):
                raise RegistrationError(f"Schema(relations=...) takes RelationType, not {rtype!r}")
            for side in (rtype.subject, rtype.object):
                if side not in self._entities:
                    raise RegistrationError(
                        f"relation {rtype.name!r}: "
                        + str(UnknownNameError("entity type", side, self._entities))
                    )
            if rtype.table in tables:
                raise RegistrationError(
                    f"relation type {rtype.name!r} needs the table {rtype.table!r}, already "
                    f"taken by {tables[rtype.table]}"
                )
            tables[rtype.table] = f"relation type {rtype.name!r}"
            self._relations[rtype.name] = rtype

    @property
    def entities(self) -> Mapping[str, EntityType]:
        """Entity types by name."""
        return MappingProxyType(self._entities)

    @property
    def relations(self) -> Mapping[str, RelationType]:
        """Relation types by name."""
        return MappingProxyType(self._relations)

    def entity(self, name: str) -> EntityType:
        """The entity type ``name``; ``UnknownNameError`` if it is not declared."""
        try:
            return self._entities[name]
        except (KeyError, TypeError):
            raise UnknownNameError("entity type", name, self._entities) from None

    def relation(self, name: str) -> RelationType:
        """The relation type ``name``; ``UnknownNameError`` if it is not declared."""
        try:
            return self._relations[name]
        except (KeyError, TypeError):
            raise UnknownNameError("relation type", name, self._relations) from None
