"""Why a relay refuses to start or stops.

::

    HookbusError
    └── RelayError
        ├── CursorAheadError       the cursor is past the server's transaction ids (restored)
        ├── DuplicateWindowError   the stream forgets message ids before the relay's retries end
        └── RelayModeError         an ordered and an unordered relay on one outbox
"""

from __future__ import annotations

from hookbus import HookbusError

__all__ = ["CursorAheadError", "DuplicateWindowError", "RelayError", "RelayModeError"]


class RelayError(HookbusError):
    """A relay cannot run safely."""


class CursorAheadError(RelayError):
    """The relay's cursor is ahead of the server's next transaction id: the database was
    restored from a dump (or the cursor copied from another database), so rows written from
    now on would sort before the cursor and never be published. ``hookbus outbox reset``
    re-sends what the outbox holds and lets the relay run again."""


class DuplicateWindowError(RelayError):
    """The stream's duplicate window is shorter than the relay's retry horizon: a batch
    re-sent after the window would be stored twice."""


class RelayModeError(RelayError):
    """The outbox is relayed in the other mode (ordered, or unordered): the two never mix,
    each would send again what the other has sent. ``hookbus outbox mode`` switches an
    outbox, every relay stopped."""
