"""What opens a request's scope: a factory, or (deprecated) an asyncpg pool turned into one."""

from __future__ import annotations

import warnings
from typing import Any, Final, final

from hookbus import Transaction

from ._asyncpg import Isolation, asyncpg_transactions, is_pool
from ._types import ScopeFactory

__all__ = ["opened", "scope_factory"]

_INSTEAD: Final = (
    "pass what opens a scope instead: {where}(..., lambda: hookbus_asyncpg.transaction(pool)), "
    "or hookbus_asgi.asyncpg_transactions(pool{options}) to have the options checked when "
    "the application is built; passing a pool will stop working in the next release"
)


def _deprecated(where: str, options: dict[str, Any]) -> None:
    shown = "".join(f", {name}={value!r}" for name, value in options.items())
    warnings.warn(
        f"{where}() given an asyncpg pool (or a function returning one) is deprecated: "
        + _INSTEAD.format(where=where, options=shown),
        DeprecationWarning,
        stacklevel=4,
    )


def scope_factory(
    where: str,
    transaction: object,
    *,
    pool: object = None,
    isolation: Isolation | None = None,
    readonly: bool = False,
    deferrable: bool = False,
) -> ScopeFactory:
    """The factory ``where`` (the caller's name, for messages) opens each request's scope with.

    ``transaction`` is a factory; a pool, a function returning a pool, the ``pool=`` keyword
    or the asyncpg options are the deprecated forms, turned into ``asyncpg_transactions``
    (whose options are checked now). A function given without options may be either: it is
    told apart at its first call, by what it returns.
    """
    options: dict[str, Any] = {}
    if isolation is not None:
        options["isolation"] = isolation
    if readonly:
        options["readonly"] = readonly
    if deferrable:
        options["deferrable"] = deferrable
    if pool is not None:
        if transaction is not None:
            raise TypeError(f"{where}() takes a scope factory or pool=, not both")
        transaction = pool
    elif transaction is None:
        raise TypeError(
            f"{where}() needs what opens a scope: a function returning an async context "
            "manager that yields a hookbus.Transaction, e.g. "
            "lambda: hookbus_asyncpg.transaction(pool)"
        )
    if pool is not None or is_pool(transaction) or options:
        _deprecated(where, options)
        return asyncpg_transactions(transaction, **options)
    if not callable(transaction):
        raise TypeError(
            f"{where}() takes a function returning an async context manager that yields a "
            f"hookbus.Transaction, not {type(transaction).__name__}"
        )
    return _FirstCall(where, transaction)


@final
class _FirstCall:
    """A factory checked at its first call: one returning a pool is the deprecated form."""

    __slots__ = ("_call", "_factory", "_where")

    def __init__(self, where: str, factory: Any) -> None:
        self._where = where
        self._factory = factory
        self._call = self._first

    def __call__(self) -> Any:
        return self._call()

    def _first(self) -> Any:
        made = self._factory()
        if is_pool(made):  # a function returning a pool (``lambda: app.state.pool``)
            _deprecated(self._where, {})
            self._call = asyncpg_transactions(self._factory)
            return self._call()
        if not hasattr(made, "__aenter__") or not hasattr(made, "__aexit__"):
            raise TypeError(
                f"the scope factory given to {self._where}() returned {made!r}, not an async "
                "context manager yielding a hookbus.Transaction"
            )
        self._call = self._factory
        return made


def opened(tx: object, where: str) -> Transaction:
    """``tx``, what a factory's context manager yielded, if it is a ``hookbus.Transaction``."""
    if not isinstance(tx, Transaction):
        raise TypeError(
            f"the scope factory given to {where}() yielded {tx!r}, not a hookbus.Transaction"
        )
    return tx
