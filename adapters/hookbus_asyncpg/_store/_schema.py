"""The store's schema: entity types with typed attributes, relation types between them.

Every name is checked when it is declared (see ``_names``), so that the SQL the store builds
from it later needs no check, and declarations are immutable, so that it stays checked: a
table or column name is an ASCII identifier PostgreSQL keeps whole and reads as declared,
unambiguous once lowercased (an entity type ``Person`` lives in the table ``person``, a
relation ``boss`` in ``boss_relation``), and no two tables or indexes share a name.

>>> schema = Schema(
...     entities=[EntityType("Person", name=Attribute(str, required=True), age=Attribute(int))],
...     relations=[RelationType("knows", "Person", "Person")],
... )
>>> schema.entity("Person").table
'person'
"""

from __future__ import annotations

import builtins
import difflib
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final, Self, final

from hookbus import HookbusError, RegistrationError, ValidationError

from ._names import MAX_COLUMNS, check_length, check_name
from ._values import TYPES, Checker

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

_CARDINALITY: Final = frozenset("1?+*")


class _Declared:
    """A declaration: immutable once built, so that nothing reaches SQL unchecked."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(
            f"{type(self).__name__} is immutable once declared (its names were checked "
            f"then): declare a new one instead of setting {name!r}"
        )

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable once declared")

    # Immutable: a copy is the object itself.
    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        return self


_set = object.__setattr__  # for the constructors alone


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


@final
class Attribute(_Declared):
    """A typed attribute of an entity type: a column of its table.

    ``type`` is one of ``str``, ``int``, ``float``, ``bool``, ``bytes``, ``Decimal``,
    ``datetime`` (aware only), ``date``, ``time`` (naive only), ``UUID``. ``required``
    refuses ``None`` and a missing value once the ``before_*`` hooks have run (they may
    compute it); ``default`` fills a value not given on insert (before the hooks see it);
    ``unique`` adds a UNIQUE constraint, whose violation is a ``ValidationError``.
    ``required`` and ``unique`` are ``bool``s: anything else is refused.
    """

    __slots__ = ("check", "default", "required", "sql_type", "type", "unique")

    check: Checker
    default: Any
    required: bool
    sql_type: str
    type: builtins.type[Any]
    unique: bool

    def __init__(
        self,
        type: builtins.type[Any],
        *,
        required: bool = False,
        default: Any = None,
        unique: bool = False,
    ) -> None:
        known = TYPES.get(type) if isinstance(type, builtins.type) else None
        if known is None:
            names = ", ".join(t.__qualname__ for t in TYPES)
            raise RegistrationError(f"attribute type {type!r} is not supported (one of {names})")
        for option, value in (("required", required), ("unique", unique)):
            if value is not True and value is not False:
                raise RegistrationError(f"Attribute({option}=...) is True or False, not {value!r}")
        sql_type, check = known
        if default is not None and check(default) is not None:
            raise RegistrationError(f"default {default!r} is not {check(default)}")
        _set(self, "type", type)
        _set(self, "sql_type", sql_type)
        _set(self, "check", check)
        _set(self, "required", required)
        _set(self, "default", default)
        _set(self, "unique", unique)

    def __repr__(self) -> str:
        flags = "".join(f", {flag}=True" for flag in ("required", "unique") if getattr(self, flag))
        default = "" if self.default is None else f", default={self.default!r}"
        return f"Attribute({self.type.__qualname__}{flags}{default})"


@final
class EntityType(_Declared):
    """An entity type: a name (``Person``) and its attributes, given as keywords.

    Its rows live in the table named after it in lowercase; ``eid`` is the key column.
    """

    __slots__ = (
        "attributes",
        "columns",
        "defaults",
        "indexes",
        "name",
        "required",
        "table",
        "unique",
    )

    attributes: Mapping[str, Attribute]
    columns: tuple[str, ...]
    defaults: Mapping[str, Any]
    indexes: tuple[str, ...]
    name: str
    required: frozenset[str]
    table: str
    unique: tuple[str, ...]

    def __init__(self, name: str, /, **attributes: Attribute) -> None:
        check_name("entity type", name, lowercase=False, table=True)
        table = name.lower()
        check_length(f"{table}_pkey", f"entity type {name!r}")
        if len(attributes) >= MAX_COLUMNS:
            raise RegistrationError(
                f"entity type {name!r} has {len(attributes)} attributes: a PostgreSQL table "
                f"has at most {MAX_COLUMNS} columns, eid included"
            )
        for attr, spec in attributes.items():
            check_name(f"{name} attribute", attr, lowercase=True, table=False)
            if attr == "eid":
                raise RegistrationError(f"attribute {name}.eid: eid is the store's key column")
            if not isinstance(spec, Attribute):
                raise RegistrationError(f"attribute {name}.{attr} must be an Attribute")
            if spec.unique:
                check_length(f"{table}_{attr}_key", f"unique attribute {name}.{attr}")
        _set(self, "name", name)
        _set(self, "table", table)
        #: Declared attributes, in declaration order (the column order).
        _set(self, "attributes", MappingProxyType(dict(attributes)))
        _set(self, "columns", tuple(attributes))
        _set(self, "required", frozenset(a for a, s in attributes.items() if s.required))
        _set(self, "unique", tuple(a for a, s in attributes.items() if s.unique))
        _set(
            self,
            "defaults",
            MappingProxyType(
                {a: s.default for a, s in attributes.items() if s.default is not None}
            ),
        )
        #: The indexes PostgreSQL makes for the table (its key, its UNIQUE constraints).
        _set(self, "indexes", (f"{table}_pkey", *(f"{table}_{a}_key" for a in self.unique)))

    def __repr__(self) -> str:
        attrs = "".join(f", {a}={s!r}" for a, s in self.attributes.items())
        return f"EntityType({self.name!r}{attrs})"

    def check(
        self, values: Mapping[str, Any], eid: Any = None, *, adding: bool, required: bool = True
    ) -> None:
        """Check ``values`` (attribute -> value) before they reach SQL.

        An unknown attribute is an ``UnknownNameError``; values of the wrong type are one
        ``ValidationError``, with (when ``required``) a required attribute set to ``None``
        or, when ``adding``, missing.
        """
        attributes = self.attributes
        errors: dict[str | None, str] = {}
        for attr, value in values.items():
            spec = attributes.get(attr)
            if spec is None:
                raise UnknownNameError("attribute", attr, self.columns, f" of {self.name}")
            if value is None:
                if required and spec.required:
                    errors[attr] = f"{self.name}.{attr} is required"
                continue
            wanted = spec.check(value)
            if wanted is not None:
                errors[attr] = f"{self.name}.{attr} must be {wanted}, not {value!r}"
        if required and adding and not self.required <= values.keys():
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
class RelationType(_Declared):
    """A relation type from a subject entity type to an object entity type.

    ``cardinality`` is CubicWeb's two characters, the subject side's then the object
    side's: ``1`` exactly one, ``?`` at most one, ``+`` at least one, ``*`` any number.
    ``"?*"`` on ``boss`` from Company to Person: a company has at most one boss, a person
    may be the boss of any number of companies. "At most" is checked as the relation is
    added; "at least" at precommit (a late operation, after the ordinary ones), for the
    entities added or unlinked in the transaction.
    """

    __slots__ = ("cardinality", "indexes", "name", "object", "subject", "table")

    cardinality: str
    indexes: tuple[str, ...]
    name: str
    object: str
    subject: str
    table: str

    def __init__(self, name: str, subject: str, object: str, cardinality: str = "**") -> None:
        check_name("relation type", name, lowercase=True, table=True)
        table = f"{name}_relation"
        check_length(f"{table}_eid_from_key", f"relation type {name!r}")
        if not isinstance(subject, str) or not isinstance(object, str):
            raise RegistrationError(f"relation {name!r}: subject and object are type names")
        if (
            not isinstance(cardinality, str)
            or len(cardinality) != 2
            or not set(cardinality) <= _CARDINALITY
        ):
            raise RegistrationError(
                f"relation {name!r}: cardinality is two of '1?+*' (subject side, then object "
                f"side), not {cardinality!r}"
            )
        _set(self, "name", name)
        _set(self, "table", table)
        _set(self, "subject", subject)
        _set(self, "object", object)
        _set(self, "cardinality", cardinality)
        indexes = [f"{table}_pkey"]
        if self.single_object:
            indexes.append(f"{table}_eid_from_key")
        if self.single_subject:
            indexes.append(f"{table}_eid_to_key")
        else:  # the reverse lookups (related(..., role="object"))
            indexes.append(f"{table}_eid_to_idx")
        #: The indexes of the table: its key, its UNIQUE constraints, the reverse lookup.
        _set(self, "indexes", tuple(indexes))

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
class Schema(_Declared):
    """The entity and relation types a :class:`Store` persists.

    Two entity types may not differ only by case (they would share a table), and no table
    or index may take the name of another (``Person_pkey`` would be the key of ``person``).
    """

    __slots__ = ("_entities", "_relations")

    _entities: Mapping[str, EntityType]
    _relations: Mapping[str, RelationType]

    def __init__(
        self, entities: Iterable[EntityType] = (), relations: Iterable[RelationType] = ()
    ) -> None:
        found: dict[str, EntityType] = {}
        related: dict[str, RelationType] = {}
        # Tables, indexes and sequences share one namespace in PostgreSQL (pg_class).
        names: dict[str, str] = {ENTITIES_TABLE: "hookbus's entities table"}

        def claim(name: str, owner: str, what: str) -> None:
            if name in names:
                raise RegistrationError(
                    f"{owner} needs the {what} {name!r}, already taken by {names[name]}"
                )
            names[name] = f"the {what} of {owner}"

        for etype in entities:
            if not isinstance(etype, EntityType):
                raise RegistrationError(f"Schema(entities=...) takes EntityType, not {etype!r}")
            owner = f"entity type {etype.name!r}"
            claim(etype.table, owner, "table")
            for index in etype.indexes:
                claim(index, owner, "index")
            found[etype.name] = etype
        for rtype in relations:
            if not isinstance(rtype, RelationType):
                raise RegistrationError(f"Schema(relations=...) takes RelationType, not {rtype!r}")
            for side in (rtype.subject, rtype.object):
                if side not in found:
                    raise RegistrationError(
                        f"relation {rtype.name!r}: "
                        + str(UnknownNameError("entity type", side, found))
                    )
            owner = f"relation type {rtype.name!r}"
            claim(rtype.table, owner, "table")
            for index in rtype.indexes:
                claim(index, owner, "index")
            related[rtype.name] = rtype
        _set(self, "_entities", MappingProxyType(found))
        _set(self, "_relations", MappingProxyType(related))

    @property
    def entities(self) -> Mapping[str, EntityType]:
        """Entity types by name."""
        return self._entities

    @property
    def relations(self) -> Mapping[str, RelationType]:
        """Relation types by name."""
        return self._relations

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
