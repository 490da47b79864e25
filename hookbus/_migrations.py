"""Migrations: per plugin version, named stages run in order, atomic or batched by key.

This module only declares what a migration is; running it belongs to a database adapter
(``hookbus_asyncpg.Migrator``), which records each stage's and each batch's progress in the
same transaction as the work.

>>> async def add_column(ctx):
...     await ctx.tx.connection.execute("ALTER TABLE item ADD COLUMN label text")
>>> async def fill_label(batch):  # batch.after is None for the first batch (id > NULL: no row)
...     await batch.tx.connection.execute(
...         "UPDATE item SET label = upper(name)"
...         " WHERE ($1::bigint IS NULL OR id > $1) AND id <= $2",
...         batch.after, batch.last)
>>> Migration("2.0", [
...     Stage("add label", add_column),
...     BatchedStage("fill label", fill_label, table="item", key="id", batch_size=5000),
... ])  # doctest: +ELLIPSIS
Migration('2.0', ...)
"""

from __future__ import annotations

import inspect
import math
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, Literal, NoReturn, TypeAlias, final

from ._exceptions import HookbusError

__all__ = [
    "Batch",
    "BatchedStage",
    "Environment",
    "Migration",
    "MigrationError",
    "Stage",
    "StageContext",
    "parse_version",
]

EnvironmentName = Literal["production", "test", "development"]
_ENVIRONMENTS: Final = ("production", "test", "development")
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
# ASCII digits only: \d also matches "٣" (Arabic-Indic three), which int() reads as 3.
_VERSION: Final = re.compile(r"[0-9]+(\.[0-9]+)*")
# lock_timeout and statement_timeout are int milliseconds on the server.
_MAX_TIMEOUT: Final = (2**31 - 1) / 1000


class MigrationError(HookbusError):
    """A stage failed (its error is the cause)."""


def storable_text_problem(text: object) -> str | None:
    """Why ``text`` cannot be a name PostgreSQL stores (NUL, lone surrogates), or None."""
    if not isinstance(text, str) or not text.strip():
        return "must be non-empty text"
    if "\x00" in text:
        return "must not contain a NUL character (PostgreSQL text cannot hold one)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"must be valid Unicode ({exc.reason} at position {exc.start})"
    return None


def refuse(problem: str) -> NoReturn:
    """Raise the ``PluginError`` of a declaration refused where it is made."""
    from ._plugins import PluginError  # here: the plugins module imports this one

    raise PluginError([problem])


def parse_version(version: str) -> tuple[int, ...]:
    """``"1.10.2"`` -> ``(1, 10, 2)``: versions are dotted integers, compared as tuples."""
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise ValueError(f"a version is dotted integers such as '1.2.0', not {version!r}")
    return tuple(int(part) for part in version.split("."))


@final
class Environment:
    """Where the code runs and how it is configured: what stage conditions and hooks test.

    ``name`` is ``production``, ``test`` or ``development``; ``flags`` are the feature flags
    turned on; ``config`` any settings of the application's. ``Environment.from_env()`` reads
    ``HOOKBUS_ENV`` (default ``development``) and ``HOOKBUS_FLAGS`` (comma separated).
    """

    __slots__ = ("config", "flags", "name")

    def __init__(
        self,
        name: EnvironmentName = "development",
        *,
        flags: Iterable[str] = (),
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if name not in _ENVIRONMENTS:
            raise ValueError(f"environment must be one of {_ENVIRONMENTS}, not {name!r}")
        self.name: Final = name
        self.flags: Final = frozenset(flags)
        self.config: Final[Mapping[str, Any]] = dict(config or {})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Environment:
        """The environment named by ``HOOKBUS_ENV`` with the flags of ``HOOKBUS_FLAGS``."""
        environ = os.environ if environ is None else environ
        name = environ.get("HOOKBUS_ENV", "development")
        flags = (f.strip() for f in environ.get("HOOKBUS_FLAGS", "").split(","))
        if name not in _ENVIRONMENTS:
            raise ValueError(f"HOOKBUS_ENV must be one of {_ENVIRONMENTS}, not {name!r}")
        return cls(name, flags=(f for f in flags if f))  # type: ignore[arg-type]

    @property
    def is_production(self) -> bool:
        """Whether ``name`` is ``production``."""
        return self.name == "production"

    @property
    def is_test(self) -> bool:
        """Whether ``name`` is ``test``."""
        return self.name == "test"

    @property
    def is_development(self) -> bool:
        """Whether ``name`` is ``development``."""
        return self.name == "development"

    def enabled(self, flag: str) -> bool:
        """Whether the feature flag ``flag`` is on."""
        return flag in self.flags

    def __repr__(self) -> str:
        return f"Environment({self.name!r}, flags={sorted(self.flags)})"


@final
class StageContext:
    """What an atomic stage, a validation and a plugin's lifecycle hooks receive.

    ``tx`` is the hookbus transaction scope the work runs in (on PostgreSQL, an
    ``AsyncpgTransaction``: send statements on ``tx.connection``); ``env`` the environment.
    """

    __slots__ = ("bus", "env", "plugin", "tx")

    def __init__(self, tx: Any, env: Environment, plugin: str, bus: Any = None) -> None:
        self.tx = tx
        self.env = env
        self.plugin = plugin
        self.bus = bus


@final
class Batch:
    """One batch of a batched stage: the keys ``after < key <= last``, ``rows`` of them.

    ``after`` is ``None`` for the first batch. The batch's work runs in ``tx``, the same
    transaction that records the batch and moves the stage's cursor to ``last``.
    """

    __slots__ = ("after", "env", "last", "number", "rows", "tx")

    def __init__(
        self, tx: Any, env: Environment, after: Any, last: Any, rows: int, number: int
    ) -> None:
        self.tx = tx
        self.env = env
        self.after = after
        self.last = last
        self.rows = rows
        self.number = number


Condition: TypeAlias = Callable[[Environment], bool]
StageFn: TypeAlias = Callable[[StageContext], Awaitable[object]]
BatchFn: TypeAlias = Callable[[Batch], Awaitable[object]]
Validate: TypeAlias = Callable[[StageContext], Awaitable[bool | None]]


class _StageBase:
    __slots__ = ("condition", "lock_timeout", "name", "statement_timeout", "validate")

    kind: str = ""

    def __init__(
        self,
        name: str,
        condition: Condition | None,
        validate: Validate | None,
        lock_timeout: float | None,
        statement_timeout: float | None,
    ) -> None:
        problem = storable_text_problem(name)
        if problem:
            refuse(f"stage {name!r}: a stage name {problem}")
        if condition is not None and not callable(condition):
            refuse(f"stage {name!r}: condition must be callable, not {condition!r}")
        _check_async(name, "validate", validate, 1)
        for label, value in (
            ("lock_timeout", lock_timeout),
            ("statement_timeout", statement_timeout),
        ):
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or not 0 < value <= _MAX_TIMEOUT
            ):
                refuse(
                    f"stage {name!r}: {label} is a finite number of seconds, > 0 and at most "
                    f"{_MAX_TIMEOUT:g}, not {value!r}"
                )
        self.name: Final = name
        self.condition: Final = condition
        self.validate: Final = validate
        self.lock_timeout: Final = lock_timeout
        self.statement_timeout: Final = statement_timeout

    def applies(self, env: Environment) -> bool:
        """Whether the stage runs in ``env`` (always, without a condition)."""
        return self.condition is None or bool(self.condition(env))


@final
class Stage(_StageBase):
    """An atomic stage: ``run(ctx)`` and ``validate(ctx)`` in one transaction.

    It rolls back whole when it fails (validation included); its progress row is written
    in the same transaction, so it is either done and recorded, or neither.
    """

    __slots__ = ("run",)
    kind = "atomic"

    def __init__(
        self,
        name: str,
        run: StageFn,
        *,
        condition: Condition | None = None,
        validate: Validate | None = None,
        lock_timeout: float | None = None,
        statement_timeout: float | None = None,
    ) -> None:
        super().__init__(name, condition, validate, lock_timeout, statement_timeout)
        _check_async(name, "run", run, 1, required=True)
        self.run: Final = run

    def __repr__(self) -> str:
        return f"Stage({self.name!r})"


@final
class BatchedStage(_StageBase):
    """A stage run in batches of ``batch_size`` rows of ``table``, paged by its unique ``key``.

    Each batch is ``WHERE key > cursor ORDER BY key LIMIT batch_size`` (never OFFSET), runs
    ``apply(batch)`` and saves the cursor in one transaction of its own, so a migrator killed
    at any point resumes at the next batch, with no row done twice and none skipped.
    ``lock_timeout`` and ``statement_timeout`` (seconds) hold for each batch's transaction.
    ``validate(ctx)`` runs after the last batch; ``undo(batch)``, when given, reverts one
    batch (the migrator's ``undo`` runs it over the batches done, newest first).
    Rows inserted behind the cursor while the stage runs, and rows whose key is NULL, are
    not visited.
    """

    __slots__ = ("apply", "batch_size", "key", "table", "undo")
    kind = "batched"

    def __init__(
        self,
        name: str,
        apply: BatchFn,
        *,
        table: str,
        key: str = "id",
        batch_size: int = 1000,
        condition: Condition | None = None,
        validate: Validate | None = None,
        undo: BatchFn | None = None,
        lock_timeout: float | None = None,
        statement_timeout: float | None = None,
    ) -> None:
        super().__init__(name, condition, validate, lock_timeout, statement_timeout)
        _check_async(name, "apply", apply, 1, required=True)
        _check_async(name, "undo", undo, 1)
        for part in table.split(".") if isinstance(table, str) else [None]:
            if not isinstance(part, str) or not _IDENTIFIER.fullmatch(part):
                refuse(f"stage {name!r}: table must be [schema.]name, not {table!r}")
        if not isinstance(key, str) or not _IDENTIFIER.fullmatch(key):
            refuse(f"stage {name!r}: key must be a column name, not {key!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            refuse(f"stage {name!r}: batch_size is an int >= 1, not {batch_size!r}")
        self.apply: Final = apply
        self.table: Final = table
        self.key: Final = key
        self.batch_size: Final = batch_size
        self.undo: Final = undo

    def __repr__(self) -> str:
        return f"BatchedStage({self.name!r}, table={self.table!r}, key={self.key!r})"


AnyStage: TypeAlias = Stage | BatchedStage


@final
class Migration:
    """The stages that bring a plugin's data to ``version``, run in the order given.

    A migration runs on upgrade when ``installed < version <= new``; stage names are unique
    within it.
    """

    __slots__ = ("stages", "version", "version_key")

    def __init__(self, version: str, stages: Iterable[AnyStage]) -> None:
        try:
            self.version_key: Final = parse_version(version)
        except ValueError as exc:
            refuse(f"migration {version!r}: {exc}")
        self.version: Final = version
        self.stages: Final = tuple(stages)
        seen: set[str] = set()
        for stage in self.stages:
            if not isinstance(stage, Stage | BatchedStage):
                refuse(f"migration {version}: {stage!r} is not a Stage or BatchedStage")
            if stage.name in seen:
                refuse(f"migration {version}: two stages are named {stage.name!r}")
            seen.add(stage.name)
        if not self.stages:
            refuse(f"migration {version} has no stage")

    def __repr__(self) -> str:
        return f"Migration({self.version!r}, {[s.name for s in self.stages]})"


def _check_async(owner: str, what: str, fn: object, arity: int, *, required: bool = False) -> None:
    if fn is None and not required:
        return
    problem = signature_problem(fn, arity)
    if problem:
        refuse(f"stage {owner!r}: {what} {problem}")


def signature_problem(fn: object, arity: int) -> str | None:
    """Why ``fn`` is not an async function taking ``arity`` positional arguments, or None."""
    if not callable(fn):
        return f"must be an async function, not {fn!r}"
    call = fn if inspect.isroutine(fn) else type(fn).__call__
    if not (inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(fn)):
        return f"must be an async function (async def), {_name(fn)} is not"
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*([None] * arity))
    except TypeError:
        return f"{_name(fn)}{signature} must accept {arity} positional argument(s)"
    return None


def _name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or repr(fn))
