"""What a store derives from its schema once: statements, checks, messages, cardinalities.

Nothing here changes after the store is built, and nothing here talks to a database: the
statements of each type, the check of many rows of it (``insert_many``), the message of each
UNIQUE constraint a violation turns into, the "at least one" sides (cardinality ``1``,
``+``) of each entity type, the relation types each entity type takes part in, and the
declarations of each attribute name across the types (to refuse a bad value before the type
of an eid is known).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, final

import asyncpg

from hookbus import Edited, ValidationError

from ._rows import RowsCheck
from ._schema import Attribute, EntityType, RelationType, Schema, UnknownNameError
from ._statements import EntityStatements, RelationStatements

__all__ = ["Catalog"]


@final
class Catalog:
    """The statements and rules of one schema, built when the :class:`Store` is."""

    __slots__ = (
        "_constraints",
        "attributes",
        "entity_sql",
        "mandatory_of",
        "relation_sql",
        "relations_of",
        "rows_check",
        "schema",
    )

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        entities, relations = schema.entities, schema.relations
        self.entity_sql = {name: EntityStatements(kind) for name, kind in entities.items()}
        #: Entity type -> insert_many's check of many rows at once.
        self.rows_check = {name: RowsCheck(kind) for name, kind in entities.items()}
        self.relation_sql = {
            name: RelationStatements(rel, entities[rel.subject], entities[rel.object])
            for name, rel in relations.items()
        }
        # UNIQUE constraint name -> (field, message) for the ValidationError it becomes.
        self._constraints: dict[str, tuple[str, str]] = {}
        for kind in entities.values():
            for attr in kind.unique:
                message = f"{kind.name}.{attr} is unique: {{value!r}} is taken"
                self._constraints[f"{kind.table}_{attr}_key"] = (attr, message)
        mandatory: dict[str, list[tuple[str, bool]]] = {name: [] for name in entities}
        for name, rel in relations.items():
            self._constraints[f"{rel.table}_pkey"] = (
                name,
                f"{{eid}} {name} {{other}} exists already",
            )
            self._constraints[f"{rel.table}_eid_from_key"] = (
                name,
                f"a {rel.subject} has at most one {name} (cardinality {rel.cardinality!r}); "
                f"{{eid}} has one already",
            )
            self._constraints[f"{rel.table}_eid_to_key"] = (
                name,
                f"a {rel.object} is the {name} of at most one {rel.subject} (cardinality "
                f"{rel.cardinality!r}); {{other}} is already",
            )
            if rel.cardinality[0] in "1+":
                mandatory[rel.subject].append((name, True))
            if rel.cardinality[1] in "1+":
                mandatory[rel.object].append((name, False))
        #: Entity type -> its "at least one" sides: (relation type, as subject).
        self.mandatory_of: Mapping[str, tuple[tuple[str, bool], ...]] = {
            name: tuple(pairs) for name, pairs in mandatory.items()
        }
        #: Entity type -> the relation types it takes part in, in either role.
        self.relations_of: Mapping[str, tuple[str, ...]] = {
            name: tuple(r for r, rel in relations.items() if name in (rel.subject, rel.object))
            for name in entities
        }
        attributes: dict[str, list[tuple[EntityType, Attribute]]] = {}
        for kind in entities.values():
            for attr, spec in kind.attributes.items():
                attributes.setdefault(attr, []).append((kind, spec))
        #: Attribute name -> (entity type, declaration) of every type declaring it.
        self.attributes: Mapping[str, tuple[tuple[EntityType, Attribute], ...]] = {
            attr: tuple(found) for attr, found in attributes.items()
        }

    def precheck(self, eid: Any, values: Mapping[str, Any]) -> None:
        """Refuse values no entity type could take, before the type of ``eid`` is known.

        An attribute no type declares is an ``UnknownNameError``; a value that every type
        declaring the attribute refuses is a ``ValidationError``. What passes is checked
        again against the entity's own type.
        """
        errors: dict[str | None, str] = {}
        for attr, value in values.items():
            declared = self.attributes.get(attr)
            if declared is None:
                raise UnknownNameError("attribute", attr, self.attributes, " of any entity type")
            if value is None:
                continue
            problems = [spec.check(value) for _, spec in declared]
            if None not in problems:
                wanted = " or ".join(dict.fromkeys(p for p in problems if p))
                errors[attr] = f"{attr} must be {wanted}, not {value!r}"
        if errors:
            raise ValidationError(eid, errors)

    def unique_error(
        self, exc: asyncpg.UniqueViolationError, eid: Any, edited: Edited | None, other: Any = None
    ) -> ValidationError:
        """Turn a UNIQUE violation into the ValidationError it means."""
        found = self._constraints.get(getattr(exc, "constraint_name", None) or "")
        if found is None:
            return ValidationError(eid, {None: str(exc)})
        field, message = found
        value = edited.get(field) if edited is not None else None
        return ValidationError(eid, {field: message.format(eid=eid, other=other, value=value)})

    def relation(self, rtype: str) -> RelationType:
        """The relation type ``rtype``; ``UnknownNameError`` if the schema has none."""
        return self.schema.relation(rtype)
