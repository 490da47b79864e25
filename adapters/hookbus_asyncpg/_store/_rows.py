"""``insert_many``'s check of its rows: a column at a time, built once per entity type.

Where no ``before_add_entity`` hook can change them, the rows are checked whole before
anything runs, and written as they are. ``RowsCheck`` does that for a whole list of rows
with C loops: each row merged into the attributes' defaults (one dict merge a row, which
also shows a key that is not an attribute: its row comes out longer), then each column at
once: the set of its value types, and for the plain types a check of the whole column
(``str``: one ``join`` searched for NUL and encoded; ``int``: its ``min`` and ``max``). A
column it cannot clear that way (a ``Decimal``, a ``datetime``, a subclass of ``str``) is
checked value by value with the attribute's own check. A row refused, or one it cannot read
that way, sends every row through the check of one row (``EntityType.check``) in order: the
first refused row raises what it always raised, with the same note.
"""

from __future__ import annotations

import datetime
import functools
import operator
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final, final

from hookbus import ValidationError

from ._schema import Attribute, EntityType

__all__ = ["RowsCheck"]

_NONE: Final = type(None)
_INT8_MIN: Final = -(2**63)
_INT8_MAX: Final = 2**63 - 1
_not_none: Final = functools.partial(operator.is_not, None)

# A column clears at once when all its values (None aside) are of exactly these types and the
# column test, if any, passes; otherwise each value goes through the attribute's check.
ColumnTest = Callable[[Any], bool]


def _strs(values: Any) -> bool:
    text = "".join(values)
    if "\x00" in text:
        return False
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:  # a lone surrogate
            return False
    return True


def _ints(values: Any) -> bool:
    return not values or (min(values) >= _INT8_MIN and max(values) <= _INT8_MAX)


def _anything(values: Any) -> bool:
    return True


_FAST: Final[Mapping[type, ColumnTest]] = {
    str: _strs,
    int: _ints,
    float: _anything,
    bool: _anything,
    bytes: _anything,
    datetime.date: _anything,  # exactly date: a datetime is of another type
    uuid.UUID: _anything,
}


@final
class _Column:
    """The check of one column of values (a tuple), for one attribute."""

    __slots__ = ("check", "exact", "fast", "of", "required")

    def __init__(self, attr: str, spec: Attribute) -> None:
        self.of = operator.itemgetter(attr)  # its value in a row
        self.check = spec.check
        self.required = spec.required
        self.fast = _FAST.get(spec.type)
        self.exact = frozenset({spec.type})

    def clears(self, rows: list[dict[str, Any]]) -> bool:
        """Whether the value of every row passes (``None`` only if not required)."""
        column = list(map(self.of, rows))
        types = set(map(type, column))
        values: Any = column
        if _NONE in types:
            if self.required:
                return False
            types.discard(_NONE)
            values = list(filter(_not_none, column))
        fast = self.fast
        if fast is not None and types <= self.exact and fast(values):
            return True
        return not any(map(self.check, values))


@final
class RowsCheck:
    """``insert_many``'s check of rows of one entity type (see the module docstring)."""

    __slots__ = ("_base", "_columns", "_kind")

    def __init__(self, kind: EntityType) -> None:
        self._kind = kind
        # Every column, in order, with its default (None without one): a row merged into it
        # gives its values in column order, defaults filled in.
        self._base = {attr: kind.defaults.get(attr) for attr in kind.columns}
        self._columns = tuple(_Column(a, spec) for a, spec in kind.attributes.items())

    def __call__(self, rows: list[Any]) -> list[dict[str, Any]]:
        """Each row as a dict of every attribute in column order, defaults filled in, each
        checked whole (required attributes included); the first refused row raises.

        (Dicts, not tuples: a dict of plain values is not tracked by the garbage collector,
        a tuple is until a collection has seen it, and 20,000 of them trigger collections.)
        """
        values = self._fast(rows)
        if values is None:
            values = self._one_by_one(rows)
        return values

    def _fast(self, rows: list[Any]) -> list[dict[str, Any]] | None:
        """The rows, or None where a row may be refused (or is not a plain mapping)."""
        base = self._base
        try:
            values = [{**base, **row} for row in rows]
        except Exception:  # not a mapping: the check of one row says what it is
            return None
        # A key that is not an attribute made its row longer than the attributes.
        if max(map(len, values), default=0) > len(base):
            return None
        if values:
            for column in self._columns:
                if not column.clears(values):
                    return None
        return values

    def _one_by_one(self, rows: list[Any]) -> list[dict[str, Any]]:
        kind, base = self._kind, self._base
        values: list[dict[str, Any]] = []
        for index, row in enumerate(rows):
            checked = kind.with_defaults(dict(row))
            try:
                kind.check(checked, adding=True, required=True)
            except (ValidationError, LookupError) as exc:
                exc.add_note(f"in row {index} of insert_many({kind.name!r}); nothing was inserted")
                raise
            values.append({**base, **checked})
        return values
