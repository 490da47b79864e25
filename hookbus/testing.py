"""Tools for testing code that uses hookbus: record emitted events, capture operations.

``record_events(bus)`` records every event emitted on a bus, with assertions::

    with record_events(bus) as events:
        await signup("alice")
    events.assert_emitted("after_add_entity", key="Person", count=1)
    events.assert_not_emitted("after_delete_entity")

``capture_operations()`` gives the code under test a scope of its own, shows which operations
it scheduled and, with ``execute=True``, runs their lifecycle when the block ends::

    async with capture_operations(execute=True) as captured:
        await signup("alice")
    assert [type(op) for op in captured.operations] == [SendWelcome]

Neither needs pytest; hookbus's pytest plugin gives them as fixtures (``hookbus_recorder``,
``hookbus_capture``), and the asyncpg adapter's plugin a database fixture (``hookbus_db``) in
which scopes commit on savepoints of a transaction rolled back after each test.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Final, final

import msgspec

from ._backend import MemoryBackend
from ._bus import Bus
from ._exceptions import TransactionStateError
from ._hooks import HookInfo
from ._operations import Operation
from ._transaction import Transaction, current_transaction

__all__ = [
    "RECORDER_CATEGORY",
    "RECORDER_PRIORITY",
    "CapturedOperations",
    "Emitted",
    "EventRecorder",
    "capture_operations",
    "postcommit_errors",
    "record_events",
]

#: The priority of the recording hook: it runs before any hook of a higher priority number.
RECORDER_PRIORITY: Final = -(2**63)
#: The category of the recording hook (``hooks_control(DENY_ALL, ...)`` must allow it).
RECORDER_CATEGORY: Final = "hookbus.testing"

_ANY: Final[Any] = object()
_logger: Final = logging.getLogger("hookbus")


@final
class Emitted(msgspec.Struct, frozen=True):
    """One recorded dispatch: the event's name, the payload's key and the payload itself."""

    event: str
    key: Any
    payload: Any


@final
class EventRecorder:
    """The events emitted on a bus while it records; see ``record_events``.

    ``emitted`` lists every dispatch in the order they started. The payloads are the objects
    the hooks received, not copies: a hook that changes one after the recorder saw it changes
    what ``payloads()`` shows.
    """

    __slots__ = ("_bus", "_hooks", "emitted")

    def __init__(self, bus: Bus) -> None:
        if not isinstance(bus, Bus):
            raise TypeError(f"EventRecorder records a hookbus.Bus, not {bus!r}")
        self._bus = bus
        self._hooks: list[HookInfo] = []
        #: Every recorded dispatch, in the order they started.
        self.emitted: list[Emitted] = []

    def _recorder_of(self, event: str) -> Callable[[Any], None]:
        # One hook per event: a payload does not always name its event.
        emitted = self.emitted

        def record(payload: Any) -> None:
            emitted.append(Emitted(event, payload.key, payload))

        record.__qualname__ = record.__name__ = f"hookbus.testing.record[{event}]"
        return record

    def start(self) -> None:
        """Start recording: register a recording hook on every event declared now."""
        if self._hooks:
            raise RuntimeError("this recorder is recording already")
        bus = self._bus
        try:
            for spec in bus.events():
                self._hooks.append(
                    bus.register(
                        self._recorder_of(spec.name),
                        spec.name,
                        category=RECORDER_CATEGORY,
                        priority=RECORDER_PRIORITY,
                    )
                )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop recording: unregister the recording hooks (what was recorded stays)."""
        hooks, self._hooks = self._hooks, []
        for info in hooks:
            self._bus.unregister(info)

    def __enter__(self) -> EventRecorder:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def matching(self, event: str, *, key: Hashable = _ANY) -> list[Emitted]:
        """The recorded dispatches of ``event`` (for ``key`` only, if given), in order."""
        return [
            emitted
            for emitted in self.emitted
            if emitted.event == event and (key is _ANY or emitted.key == key)
        ]

    def payloads(self, event: str, *, key: Hashable = _ANY) -> list[Any]:
        """The payloads of the recorded dispatches of ``event`` (for ``key`` if given)."""
        return [emitted.payload for emitted in self.matching(event, key=key)]

    def assert_emitted(
        self, event: str, *, key: Hashable = _ANY, count: int | None = None
    ) -> list[Any]:
        """Assert that ``event`` (for ``key``) was emitted: ``count`` times, or at least once.

        Return the matching payloads. The failure message lists what was emitted instead.
        """
        self._check_event(event)
        if count is not None and (not isinstance(count, int) or count < 0):
            raise ValueError(f"count must be an int >= 0 or None, not {count!r}")
        found = self.payloads(event, key=key)
        if (count is None and not found) or (count is not None and len(found) != count):
            wanted = "at least once" if count is None else _times(count)
            raise AssertionError(
                f"expected {_described(event, key)} to be emitted {wanted}, "
                f"it was emitted {_times(len(found))}\n{self._summary()}"
            )
        return found

    def assert_not_emitted(self, event: str, *, key: Hashable = _ANY) -> None:
        """Assert that ``event`` (for ``key``, if given) was not emitted."""
        self.assert_emitted(event, key=key, count=0)

    def clear(self) -> None:
        """Forget what was recorded so far."""
        self.emitted.clear()

    def _check_event(self, event: str) -> None:
        names = {spec.name for spec in self._bus.events()}
        if event not in names:
            # An assertion on a misspelled name would pass forever: refuse it.
            self._bus.hooks_for(event)  # raises UnknownEventError naming the close names

    def _summary(self) -> str:
        if not self.emitted:
            return "nothing was emitted on this bus while recording"
        counts = Counter((emitted.event, emitted.key) for emitted in self.emitted)
        lines = [
            f"  {event}{'' if key is None else f' [key={key!r}]'}: {_times(n)}"
            for (event, key), n in counts.items()
        ]
        return "emitted while recording (in order of first dispatch):\n" + "\n".join(lines)


def _described(event: str, key: Hashable) -> str:
    return repr(event) if key is _ANY else f"{event!r} with key {key!r}"


def _times(n: int) -> str:
    return {0: "0 times", 1: "once"}.get(n, f"{n} times")


@contextmanager
def record_events(bus: Bus) -> Iterator[EventRecorder]:
    """Record the events emitted on ``bus`` during the block.

    The recorder is a plain hook registered on every event declared when the block starts,
    with the lowest priority there is (``RECORDER_PRIORITY``) so that it runs first, and
    unregistered at the end. So: events declared later are not recorded; a dispatch under
    ``hooks_control(DENY_ALL, ...)`` is recorded only if that block allows the category
    ``"hookbus.testing"`` (``RECORDER_CATEGORY``); an emit that fails before any hook runs
    (an undeclared event, a payload of the wrong type) is not recorded.
    """
    recorder = EventRecorder(bus)
    with recorder:
        yield recorder


@final
class CapturedOperations:
    """The operations a block scheduled; see ``capture_operations``."""

    __slots__ = ("_tx", "operations", "postcommit_errors")

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx
        #: The captured operations in the order their precommit runs (filled as the block
        #: ends; with ``execute=True``, also those scheduled while they ran).
        self.operations: list[Operation] = []
        #: What their postcommit raised, when they were executed.
        self.postcommit_errors: list[BaseException] = []

    @property
    def transaction(self) -> Transaction:
        """The scope the block scheduled into."""
        return self._tx


@asynccontextmanager
async def capture_operations(*, execute: bool = False) -> AsyncIterator[CapturedOperations]:
    """Capture the operations the block schedules; with ``execute=True``, run them at its end.

    The block runs in a scope of its own, on a ``MemoryBackend`` (no database), which
    ``current_transaction()`` finds: an operation the block schedules there is captured, one
    scheduled inside a savepoint that rolled back is left out (it got its ``rollback``).
    When the block ends normally, ``captured.operations`` lists them, then:

    * ``execute=True``: the scope commits, so their lifecycle runs: ``precommit`` in order,
      looping while operations schedule operations (captured too), then ``postcommit``; an
      error in a precommit propagates, errors in postcommit are raised together in an
      ``ExceptionGroup`` (in production they would be logged and counted);
    * ``execute=False``: the scope does not commit: like any scope that does not, it calls
      ``rollback`` on them.

    If the block raises, the scope rolls back and the error propagates. Code that opens a
    database scope of its own (``hookbus_asyncpg.transaction(pool)``) schedules into that one,
    not here: with a database, use the pytest plugin's ``hookbus_db`` fixture instead.
    """
    if not isinstance(execute, bool):
        raise TypeError(f"execute must be True or False, not {execute!r}")
    try:
        outer = current_transaction()
    except TransactionStateError:
        outer = None
    if outer is not None:
        raise TransactionStateError(
            f"capture_operations() opens a scope of its own, and {outer!r} is open here: "
            "its operations run when it ends (record them with tx.operations)"
        )
    tx = Transaction(MemoryBackend())
    captured = CapturedOperations(tx)
    with postcommit_errors(tx) as errors:
        async with tx:
            yield captured
            captured.operations = list(tx.operations)
            if not execute:
                await tx.rollback()
    if not execute:
        return
    # The scope committed: the operations ran, those they scheduled included.
    captured.operations = list(tx.operations)
    captured.postcommit_errors = errors
    if errors:
        raise ExceptionGroup(
            f"{len(errors)} postcommit operation(s) raised in capture_operations()",
            [error if isinstance(error, Exception) else RuntimeError(error) for error in errors],
        )


@contextmanager
def postcommit_errors(tx: Transaction) -> Iterator[list[BaseException]]:
    """Collect what the postcommit operations of ``tx`` raise while the block ends it.

    A postcommit error is logged on the ``hookbus`` logger and counted in
    ``tx.postcommit_errors``, never raised: test tools use this to raise it instead. The list
    is filled when the block ends, with as many errors as were counted meanwhile (a
    ``RuntimeError`` stands for one whose log record was not emitted, the logger being
    disabled or above ERROR).
    """
    handler = _Records()
    before = tx.postcommit_errors
    errors: list[BaseException] = []
    _logger.addHandler(handler)
    try:
        yield errors
    finally:
        _logger.removeHandler(handler)
        count = tx.postcommit_errors - before
        if count:
            for record in handler.records[-count:]:
                error = record.exc_info[1] if record.exc_info else None
                if error is not None:
                    # Say which operation raised it, as the log line does.
                    error.add_note(f"hookbus: {record.getMessage()}")
                    errors.append(error)
            missing = count - len(errors)
            errors.extend(
                RuntimeError(f"a postcommit operation of {tx!r} raised; its error was not logged")
                for _ in range(missing)
            )


class _Records(logging.Handler):
    """Keeps the errors logged while attached."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
