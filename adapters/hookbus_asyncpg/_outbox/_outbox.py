"""``Outbox``: events marked for publication, written in the transaction that made them.

>>> outbox = Outbox(bus, subject_prefix="shop")  # doctest: +SKIP
>>> async with hookbus_asyncpg.transaction(pool) as tx:  # doctest: +SKIP
...     await tx.connection.execute("INSERT INTO orders ...")
...     await outbox.publish(tx, "order_placed", OrderPlaced(order=42), key="order-42")

``publish`` checks and encodes the event at the call and keeps its ``hookbus_outbox`` row
in the scope (``tx.accumulate``: a savepoint rolled back takes it away); the scope sends the
rows of all its publishes, in call order, as one INSERT in COMMIT's own message
(``tx.send_with_commit``): no round trip of their own, and the event exists if and only if
the transaction commits. The row carries the payload encoded with msgspec (see
``_outbox_wire``), the subject, the ordering key, the headers (``traceparent`` when a
``headers`` callable such as ``hookbus_otel.trace_headers`` is given) and the writer's
``pg_current_xact_id()``; its ``msg_id`` is a random UUID (version 4) drawn at the call.
Nothing here imports NATS: a relay (``hookbus_nats.Relay``) publishes the rows once they are
committed.
"""

from __future__ import annotations

import difflib
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, NoReturn, final

import msgspec

from hookbus import (
    Bus,
    EventSpec,
    LateOperation,
    LoadEvent,
    QueryEvent,
    ServerEvent,
    SessionEvent,
    TransactionState,
    TransactionStateError,
    UnknownEventError,
)

from .._transaction._transaction import AsyncpgTransaction
from ._outbox_table import NOTIFY_CHANNEL
from ._outbox_wire import encode_payload

__all__ = ["Outbox", "check_subject"]

_OPEN: Final = (TransactionState.ACTIVE, TransactionState.PRECOMMITTING)
_INSERT: Final = (
    "INSERT INTO hookbus_outbox (msg_id, subject, event, payload, headers, ordering_key) VALUES "
)
# PostgreSQL sends a NOTIFY at COMMIT only (never for a rollback).
_NOTIFY: Final = f"NOTIFY {NOTIFY_CHANNEL};"
_headers_encoder: Final = msgspec.json.Encoder()


def _text(value: str, what: str) -> str:
    """``value`` as a SQL string literal, whatever ``standard_conforming_strings`` is (an
    escape string: backslashes and quotes doubled); ``ValueError`` for what PostgreSQL's
    text refuses (a NUL character, a lone surrogate), at the call."""
    if "\x00" in value:
        raise ValueError(f"{what} {value!r} holds a NUL character, which PostgreSQL refuses")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise ValueError(f"{what} {value!r} is not valid UTF-8 text: {exc}") from None
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


@final
class _Rows(LateOperation):
    """The outbox rows of one scope, accumulated by ``publish`` in call order (a savepoint
    rolled back takes its rows out); at precommit, after the other operations (which may
    publish too), handed to the scope as one INSERT sent in COMMIT's own message."""

    __slots__ = ("_notify", "_tx")

    def __init__(self, tx: AsyncpgTransaction, notify: bool) -> None:
        super().__init__()
        self._tx, self._notify = tx, notify

    async def precommit(self) -> None:
        rows: list[str] = self.values
        if rows:
            notify = _NOTIFY if self._notify else ""
            self._tx.send_with_commit(f"{_INSERT}{', '.join(rows)};{notify}")


@dataclass(frozen=True, slots=True)
class _RowsOf:
    """The factory of a scope's ``_Rows``: equal for one scope (what ``accumulate`` asks)."""

    tx: AsyncpgTransaction
    notify: bool

    def __call__(self) -> _Rows:
        return _Rows(self.tx, self.notify)


def check_subject(subject: str) -> str:
    """``subject`` if it is a NATS subject a message can be published to, else ``ValueError``."""
    if (
        not isinstance(subject, str)
        or not subject
        or any(not token or token in ("*", ">") for token in subject.split("."))
        or any(c.isspace() for c in subject)
    ):
        raise ValueError(
            f"{subject!r} is not a NATS subject to publish to (dot-separated non-empty tokens, "
            "no spaces, no wildcards)"
        )
    return subject


# The built-in payloads that carry live objects (the application, the session, a row being
# loaded, a statement): of the built-in events, only entity and relation events go on the wire.
_LOCAL_ONLY: Final = (LoadEvent, QueryEvent, ServerEvent, SessionEvent)


def _publishable(spec: EventSpec) -> bool:
    return not issubclass(spec.payload, _LOCAL_ONLY)


@final
class Outbox:
    """Marks events of ``bus`` for publication, in the transaction of the scope given.

    ``subject_prefix`` makes an event's default subject, ``<prefix>.<event name>``.
    ``events``, when given, are the only names ``publish`` accepts, checked here (a typo
    fails at start-up, not at the first publish). ``headers`` is called at each publish for
    headers to carry (``hookbus_otel.trace_headers`` carries the ``traceparent``).
    ``notify`` wakes relays at COMMIT (``LISTEN hookbus_outbox``); relays also poll, so
    turning it off only delays delivery by up to their poll interval.
    """

    __slots__ = ("_allowed", "_bus", "_headers", "_notify", "_specs", "subject_prefix")

    def __init__(
        self,
        bus: Bus,
        *,
        subject_prefix: str = "hookbus",
        events: Iterable[str] | None = None,
        headers: Callable[[], Mapping[str, str]] | None = None,
        notify: bool = True,
    ) -> None:
        if not isinstance(bus, Bus):
            raise TypeError(f"Outbox() takes a hookbus.Bus, not {bus!r}")
        self._bus: Final = bus
        self.subject_prefix: Final = check_subject(subject_prefix)
        self._headers: Final = headers
        self._notify: Final = bool(notify)
        self._specs: dict[str, EventSpec] = {}
        self._allowed: Final = None if events is None else frozenset(events)
        for name in self._allowed or ():
            self._spec(name)

    def _spec(self, name: str) -> EventSpec:
        spec = self._specs.get(name)
        if spec is None:
            self._specs = {s.name: s for s in self._bus.events() if _publishable(s)}
            spec = self._specs.get(name)
            if spec is None:
                self._refuse(name)
        if self._allowed is not None and name not in self._allowed:
            raise UnknownEventError(name, tuple(sorted(self._allowed)))
        return spec

    def _refuse(self, name: str) -> NoReturn:
        if any(s.name == name for s in self._bus.events()):
            raise TypeError(
                f"event {name!r} cannot be published: of the built-in events, only the "
                "entity and relation events go on the wire"
            )
        close = difflib.get_close_matches(str(name), self._specs, n=3, cutoff=0.6)
        raise UnknownEventError(str(name), tuple(close))

    def subject(self, name: str) -> str:
        """The default subject of the event ``name``."""
        return f"{self.subject_prefix}.{name}"

    async def publish(
        self,
        tx: AsyncpgTransaction,
        name: str,
        payload: msgspec.Struct,
        *,
        key: str | None = None,
        subject: str | None = None,
    ) -> str:
        """Mark the event ``name`` with ``payload`` for publication in ``tx``; return its
        message id.

        Refused at the call, before anything is kept: an undeclared name
        (``UnknownEventError`` with the closest names), a payload that is not the struct
        declared for it (``TypeError``), a subject that is not one or text PostgreSQL refuses
        (a NUL character: ``ValueError``), a scope that is not open or is read-only
        (``TransactionStateError``). ``key`` is the ordering key (kept in the row for
        consumers that order by key); ``subject`` overrides the default one.

        The row is sent with the scope's COMMIT, in the same message: a savepoint rolled back
        takes it away, and what only the server can refuse (the table missing, a privilege)
        is raised at the end of the scope, which then rolls back.
        """
        spec = self._spec(name)
        data = encode_payload(spec, payload)
        target = self.subject(name) if subject is None else check_subject(subject)
        if key is not None and not isinstance(key, str):
            raise TypeError(f"an ordering key is a str, not {key!r}")
        if not isinstance(tx, AsyncpgTransaction):
            raise TypeError(f"publish() takes a hookbus_asyncpg transaction scope, not {tx!r}")
        if tx.state not in _OPEN:
            raise TransactionStateError(
                f"publish() needs an open scope; this one is {tx.state.name.lower()}"
            )
        if tx.options.readonly:
            raise TransactionStateError("publish() needs a scope that writes; this one is readonly")
        headers = "'{}'"
        if self._headers is not None:
            given = dict(self._headers())
            for item in (*given, *given.values()):
                if isinstance(item, str) and "\x00" in item:
                    raise ValueError(f"header {item!r} holds a NUL character, which jsonb refuses")
            headers = _text(_headers_encoder.encode(given).decode(), "the headers")
        msg_id = str(uuid.uuid4())
        row = (
            f"('{msg_id}', {_text(target, 'subject')}, {_text(name, 'event name')}, "
            f"E'\\\\x{data.hex()}'::bytea, {headers}::jsonb, "
            f"{'NULL' if key is None else _text(key, 'ordering key')})"
        )
        if not tx.begun:
            await tx.begin()  # the rows go with COMMIT: the transaction must have begun
        rows = _RowsOf(tx, self._notify)
        tx.accumulate(rows, row, rows, list)
        return msg_id
