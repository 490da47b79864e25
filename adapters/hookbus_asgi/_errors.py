"""What a request answers when its transaction fails: the status and JSON body per error."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Final, TypeAlias, final

import msgspec

from hookbus import CommitOutcomeUnknownError, TransactionAbortedError, ValidationError

__all__ = [
    "ErrorResponse",
    "ErrorMapper",
    "commit_on_success",
    "error_response",
    "is_retryable",
]

#: SQLSTATEs of a transaction that lost to a concurrent one: retrying it may succeed.
RETRYABLE_SQLSTATES: Final = frozenset({"40001", "40P01"})  # serialization failure, deadlock

_encode: Final = msgspec.json.Encoder().encode


@final
class ErrorResponse(msgspec.Struct, frozen=True):
    """An error answer: an HTTP status and a JSON body (bytes)."""

    status: int
    body: bytes

    @classmethod
    def json(cls, status: int, content: object) -> ErrorResponse:
        """An error response whose body is ``content`` encoded as JSON."""
        return cls(status, _encode(content))

    def messages(self) -> tuple[dict[str, object], dict[str, object]]:
        """The ASGI ``http.response.start`` and ``http.response.body`` messages."""
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.body)).encode()),
        ]
        start: dict[str, object] = {
            "type": "http.response.start",
            "status": self.status,
            "headers": headers,
        }
        return start, {"type": "http.response.body", "body": self.body, "more_body": False}


#: Maps an exception to the answer for it, or ``None`` to let it propagate.
ErrorMapper: TypeAlias = Callable[[BaseException], "ErrorResponse | None"]


def commit_on_success(status: int) -> bool:
    """The default commit decision: commit on 1xx, 2xx and 3xx, roll back on 4xx and 5xx."""
    return status < 400


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (asyncpg's ``sqlstate``), else ``None``."""
    code = getattr(exc, "sqlstate", None)
    return code if isinstance(code, str) else None


def database_errors() -> tuple[type[Exception], ...]:
    """The database errors a framework's handlers map: asyncpg's, if asyncpg is loaded."""
    asyncpg = sys.modules.get("asyncpg")  # not loaded: none of its errors can be raised
    return () if asyncpg is None else (asyncpg.PostgresError,)


def is_retryable(exc: BaseException) -> bool:
    """Tell whether ``exc`` is a serialization failure (40001) or a deadlock (40P01)."""
    return sqlstate(exc) in RETRYABLE_SQLSTATES


def error_response(exc: BaseException) -> ErrorResponse | None:
    """The default answer to an exception raised by a request or by its COMMIT.

    ================================================  =====  ================================
    ``hookbus.ValidationError``                        422    its ``to_json()``
    serialization failure (40001), deadlock (40P01)    409    retry the request
    integrity constraint violation (SQLSTATE 23xxx)    409    e.g. a deferred FK at COMMIT
    ``hookbus.CommitOutcomeUnknownError``              503    the outcome is unknown
    ``hookbus.TransactionAbortedError``                500    nothing was committed
    anything else                                      --     ``None``: propagates
    ================================================  =====  ================================
    """
    if isinstance(exc, ValidationError):
        return ErrorResponse(422, exc.to_json())
    code = sqlstate(exc)
    if code in RETRYABLE_SQLSTATES:
        return ErrorResponse.json(
            409,
            {
                "detail": "the transaction conflicted with a concurrent one and was rolled "
                "back; nothing was committed: retry the request",
                "sqlstate": code,
            },
        )
    if code is not None and code.startswith("23"):
        return ErrorResponse.json(
            409,
            {
                "detail": "the transaction violated a database constraint and was rolled "
                "back; nothing was committed",
                "sqlstate": code,
            },
        )
    if isinstance(exc, CommitOutcomeUnknownError):
        return ErrorResponse.json(
            503,
            {
                "detail": "the connection to the database was lost during COMMIT: the outcome "
                "of the transaction is unknown (it may or may not have been committed); check "
                "before retrying",
            },
        )
    if isinstance(exc, TransactionAbortedError):
        return ErrorResponse.json(
            500,
            {"detail": "the database rolled the transaction back; nothing was committed"},
        )
    return None


#: What a COMMIT that failed in an unmapped way answers (the response cannot re-raise).
NOT_COMMITTED: Final = ErrorResponse.json(
    500, {"detail": "the transaction could not be committed; nothing was committed"}
)
