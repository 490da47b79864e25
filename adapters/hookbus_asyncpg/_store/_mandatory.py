"""The "at least one" cardinalities (``1``, ``+``), checked once per scope before COMMIT.

Writes note the entities to check: one added whose type has such a side, both ends of such
a relation deleted. The notes accumulate into one :class:`CheckMandatory` per scope, a
``LateOperation`` (as CubicWeb's cardinality check is): it runs after every ordinary
precommit operation, so that one of them may still add the relation an entity needs. An
entity noted once a check has started (by a later operation) goes to a new check (the
scope hands values accumulated after an operation's precommit to a new instance), which
still runs before COMMIT. An entity deleted in the scope needs no partner and is skipped.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any, final

from hookbus import LateOperation, ValidationError

from ._schema import RelationType
from ._scoped import ScopedStore, Stopped

__all__ = ["CheckMandatory", "note_added", "note_unlinked"]


@final
class CheckMandatory(LateOperation):
    """At precommit: each entity noted has its "at least one" relations.

    ``values`` are ``(rtype, as_subject, eid)``.
    """

    __slots__ = ("scoped",)

    def __init__(self, scoped: ScopedStore) -> None:
        super().__init__()
        self.scoped = scoped

    async def precommit(self) -> None:
        scoped = self.scoped
        groups: dict[tuple[str, bool], list[int]] = {}
        for rtype, as_subject, eid in self.values:
            if not scoped.tx.deleted(eid):
                groups.setdefault((rtype, as_subject), []).append(eid)
        for (rtype, as_subject), eids in sorted(groups.items()):
            statements = scoped.catalog.relation_sql[rtype]
            sql = statements.missing_object if as_subject else statements.missing_subject
            try:
                rows = await scoped.run(sql, (sorted(eids),))
            except Stopped:
                continue  # a before_query hook stopped the check: it did not run
            if rows:
                raise _lacking(scoped.catalog.relation(rtype), as_subject, rows)


def _lacking(relation: RelationType, as_subject: bool, rows: Iterable[Any]) -> ValidationError:
    lacking = sorted(row[0] for row in rows)
    role = "subject" if as_subject else "object"
    shown = ", ".join(map(str, lacking[:5])) + (", ..." if len(lacking) > 5 else "")
    return ValidationError(
        lacking[0],
        {
            relation.name: f"cardinality {relation.cardinality!r}: as {role}, each of "
            f"{shown} needs at least one {relation.name}"
        },
    )


def _note(scoped: ScopedStore, rtype: str, as_subject: bool, eid: int) -> None:
    factory = scoped.check_factory
    if factory is None:  # one factory per scoped store: accumulate() knows a key's by identity
        factory = scoped.check_factory = functools.partial(CheckMandatory, scoped)
    scoped.tx.accumulate((scoped.key, "mandatory"), (rtype, as_subject, eid), factory)


def note_added(scoped: ScopedStore, sides: Sequence[tuple[str, bool]], eid: int) -> None:
    """An entity with "at least one" ``sides`` was added: check them before COMMIT."""
    for rtype, as_subject in sides:
        _note(scoped, rtype, as_subject, eid)


def note_unlinked(scoped: ScopedStore, relation: RelationType, pairs: Iterable[Any]) -> None:
    """Relations ``(eidfrom, eidto)`` were deleted: check their "at least one" sides."""
    subject, object = relation.cardinality[0] in "1+", relation.cardinality[1] in "1+"
    if not (subject or object):
        return
    for eidfrom, eidto in pairs:
        if subject:
            _note(scoped, relation.name, True, eidfrom)
        if object:
            _note(scoped, relation.name, False, eidto)
