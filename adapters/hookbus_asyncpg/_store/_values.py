"""The attribute types: the SQL type of each, and the check of a value before it reaches SQL.

A check accepts exactly what asyncpg encodes faithfully and PostgreSQL stores as given, and
refuses the rest before any statement is prepared: a ``str`` that UTF-8 cannot encode (a
lone surrogate) or holding NUL, an ``int`` past 64 bits, a number too large for a float, a
``Decimal`` signalling NaN (asyncpg would store a quiet NaN) or past numeric's range (asyncpg
would store 0), a naive ``datetime`` (ambiguous: asyncpg would read it as UTC), a ``time``
with a time zone (the column has none: it would be dropped).
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

__all__ = ["Checker", "TYPES", "check_eid"]

Checker = Callable[[Any], str | None]  # returns the problem, or None when the value is fine

_INT8_MIN: Final = -(2**63)
_INT8_MAX: Final = 2**63 - 1
# numeric: up to 131072 digits before the decimal point, 16383 after (as asyncpg encodes it)
_NUMERIC_MAX_ADJUSTED: Final = 131071
_NUMERIC_MAX_SCALE: Final = 16383


def _check_int(value: Any) -> str | None:
    if type(value) is bool or not isinstance(value, int):
        return "an int"
    return None if _INT8_MIN <= value <= _INT8_MAX else "an int within 64 bits"


def check_eid(eid: Any) -> str | None:
    """What an eid must be, if ``eid`` is not that; ``None`` if it is fine."""
    return _check_int(eid)


def _check_float(value: Any) -> str | None:
    if isinstance(value, float):
        return None
    if type(value) is bool or not isinstance(value, int):
        return "a float"
    try:
        float(value)
    except OverflowError:
        return "a float (this int is too large for one)"
    return None


def _check_str(value: Any) -> str | None:
    if not isinstance(value, str):
        return "a str"
    if "\x00" in value:
        return "a str without NUL characters"
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            return "a str UTF-8 can encode (no lone surrogate)"
    return None


def _check_decimal(value: Any) -> str | None:
    if not isinstance(value, decimal.Decimal):
        return "a Decimal"
    if value.is_snan():
        return "a Decimal other than a signalling NaN"
    exponent = value.as_tuple().exponent  # an int when the value is finite
    if isinstance(exponent, int) and (
        value.adjusted() > _NUMERIC_MAX_ADJUSTED or -exponent > _NUMERIC_MAX_SCALE
    ):
        return (
            f"a Decimal within PostgreSQL's numeric (at most {_NUMERIC_MAX_ADJUSTED + 1} digits "
            f"before the point and {_NUMERIC_MAX_SCALE} after)"
        )
    return None


def _check_datetime(value: Any) -> str | None:
    if not isinstance(value, datetime.datetime):
        return "a datetime"
    if value.utcoffset() is None:
        return "an aware datetime (a naive one is ambiguous: give it a tzinfo)"
    return None


def _check_time(value: Any) -> str | None:
    if not isinstance(value, datetime.time):
        return "a time"
    if value.tzinfo is not None:
        return "a time without tzinfo (the column keeps no time zone)"
    return None


def _check_date(value: Any) -> str | None:
    if not isinstance(value, datetime.date) or isinstance(value, datetime.datetime):
        return "a date"
    return None


def _instance_of(cls: type) -> Checker:
    label = f"a {cls.__qualname__}"

    def check(value: Any) -> str | None:
        return None if isinstance(value, cls) else label

    return check


#: Python type -> (SQL type as format_type() spells it, the check of a value).
TYPES: Final[Mapping[type, tuple[str, Checker]]] = MappingProxyType(
    {
        str: ("text", _check_str),
        int: ("bigint", _check_int),
        float: ("double precision", _check_float),
        bool: ("boolean", _instance_of(bool)),
        bytes: ("bytea", _instance_of(bytes)),
        decimal.Decimal: ("numeric", _check_decimal),
        datetime.datetime: ("timestamp with time zone", _check_datetime),
        datetime.date: ("date", _check_date),
        datetime.time: ("time without time zone", _check_time),
        uuid.UUID: ("uuid", _instance_of(uuid.UUID)),
    }
)
