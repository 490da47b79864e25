"""``Outbox``: events marked for publication, written in the transaction that made them.

>>> outbox = Outbox(bus, subject_prefix="shop")  # doctest: +SKIP
>>> async with hookbus_asyncpg.transaction(pool) as tx:  # doctest: +SKIP
...     await tx.connection.execute("INSERT INTO orders ...")
...     await outbox.publish(tx, "order_placed", OrderPlaced(order=42), key="order-42")

``publish`` writes one ``hookbus_outbox`` row on the scope's connection, so the event exists
if and only if the transaction commits (a savepoint rolled back takes it away too). The row
carries the payload encoded with msgspec (see ``_outbox_wire``), the subject, the ordering
key, the headers (``traceparent`` when a ``headers`` callable such as
``hookbus_otel.trace_headers`` is given) and the writer's ``pg_current_xact_id()``; its
``msg_id`` is a random UUID PostgreSQL draws for the row. Nothing here imports NATS: a relay
(``hookbus_nats.Relay``) publishes the rows once they are committed.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from typing import Final, NoReturn, final

import msgspec

from hookbus import (
    Bus,
    EventSpec,
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
    "INSERT INTO hookbus_outbox (subject, event, payload, headers, ordering_key) "
    "VALUES ($1, $2, $3, $4::text::jsonb, $5) RETURNING msg_id, xid::text"
)
# The NOTIFY in the same statement: one round trip; PostgreSQL sends it at COMMIT only.
_INSERT_NOTIFY: Final = (
    "WITH row AS (INSERT INTO hookbus_outbox (subject, event, payload, headers, ordering_key) "
    "VALUES ($1, $2, $3, $4::text::jsonb, $5) RETURNING msg_id, xid) "
    f"SELECT msg_id, xid::text FROM row, pg_notify('{NOTIFY_CHANNEL}', '')"
)
_headers_encoder: Final = msgspec.json.Encoder()


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

    __slots__ = ("_allowed", "_bus", "_headers", "_insert", "_specs", "subject_prefix")

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
        self._insert: Final = _INSERT_NOTIFY if notify else _INSERT
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
        """Write the event ``name`` with ``payload`` to the outbox in ``tx``; return its
        message id.

        Refused at the call, before anything is written: an undeclared name
        (``UnknownEventError`` with the closest names), a payload that is not the struct
        declared for it (``TypeError``), a subject that is not one (``ValueError``), a scope
        that is not open (``TransactionStateError``). ``key`` is the ordering key (kept in
        the row for consumers that order by key); ``subject`` overrides the default one.
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
        headers = "{}"
        if self._headers is not None:
            headers = _headers_encoder.encode(dict(self._headers())).decode()
        (row,) = await tx.connection.fetch(self._insert, target, name, data, headers, key)
        # the row's transaction id is the scope's: it commits with a plain COMMIT, and a lost
        # COMMIT's outcome is still found (as after the store's inserts)
        tx.note_transaction_id(row[1])
        msg_id: str = row[0]
        return msg_id
