"""Which kind of relay runs on an outbox: ``ordered`` (``Relay``: a cursor per name) or
``unordered`` (``UnorderedRelay``: rows marked ``sent_at``). The two never mix.

The first relay to start on an outbox records its mode in ``hookbus_outbox_mode``; a relay
of the other mode refuses to start (``RelayModeError``, naming the fix). A cursor knows
nothing of the rows an unordered relay marked sent, and an unordered relay nothing of a
cursor: mixed, each would send again what the other has sent. ``hookbus outbox mode``
switches an outbox, every relay stopped: to ``unordered``, the rows every cursor has passed
are marked sent and the cursors dropped; to ``ordered``, the rows marked sent are deleted
(a new cursor starts from the first row the outbox holds, all of them unsent).
"""

from __future__ import annotations

from typing import Any, Final, Literal

from ._relay_errors import RelayModeError

__all__ = ["Mode", "claim_mode", "hold_unordered", "read_mode", "switch_mode", "unordered_running"]

Mode = Literal["ordered", "unordered"]
_FLAG: Final[dict[str, str]] = {"ordered": "without --unordered", "unordered": "--unordered"}

_CLAIM: Final = """\
WITH new AS (INSERT INTO hookbus_outbox_mode (mode) VALUES ($1) ON CONFLICT DO NOTHING
             RETURNING mode)
SELECT mode FROM new UNION ALL SELECT mode FROM hookbus_outbox_mode"""
# To unordered: what every cursor has passed is sent (as cleanup sees it), then no cursor.
_TO_UNORDERED: Final = """\
UPDATE hookbus_outbox o SET sent_at = clock_timestamp()
WHERE o.sent_at IS NULL
  AND EXISTS (SELECT FROM hookbus_outbox_cursor c WHERE (o.xid, o.id) <= (c.xid, c.id))
  AND NOT EXISTS (SELECT FROM hookbus_outbox_cursor c WHERE (o.xid, o.id) > (c.xid, c.id))"""
# To ordered: the rows sent go, so a cursor from the start sends exactly the unsent ones.
_TO_ORDERED: Final = "DELETE FROM hookbus_outbox WHERE sent_at IS NOT NULL"
_SET: Final = """\
INSERT INTO hookbus_outbox_mode (mode) VALUES ($1)
ON CONFLICT (one) DO UPDATE SET mode = EXCLUDED.mode, set_at = clock_timestamp()"""


# Every unordered relay holds it shared on a connection of its own while it runs; a switch
# takes it exclusive for its transaction (a relay starting meanwhile waits, then is refused).
_UNORDERED_KEY: Final = "hookbus.outbox.unordered"


async def hold_unordered(conn: Any) -> None:
    """Hold the unordered relays' shared lock on ``conn`` (until its session ends)."""
    await conn.execute("SELECT pg_advisory_lock_shared(hashtext($1))", _UNORDERED_KEY)


async def unordered_running(conn: Any) -> bool:
    """Whether an unordered relay runs; if none, no other starts before this transaction
    ends."""
    took: bool = await conn.fetchval(
        "SELECT pg_try_advisory_xact_lock(hashtext($1))", _UNORDERED_KEY
    )
    return not took


async def read_mode(conn: Any) -> Mode | None:
    """The mode recorded for the outbox (``None``: no relay has run; or a 1.0 layout)."""
    if await conn.fetchval("SELECT to_regclass('hookbus_outbox_mode')") is None:
        return None
    mode: Mode | None = await conn.fetchval("SELECT mode FROM hookbus_outbox_mode")
    return mode


async def claim_mode(conn: Any, mode: Mode) -> None:
    """Record ``mode`` for the outbox if none is, else refuse another one."""
    if await conn.fetchval("SELECT to_regclass('hookbus_outbox_mode')") is None:
        raise RelayModeError(
            "the outbox is at layout 1.0: run `hookbus migrate` to upgrade the "
            "hookbus_outbox plugin to 1.1, then start the relay"
        )
    recorded = await conn.fetchval(_CLAIM, mode)
    if recorded is None:  # another relay recorded it after this statement's snapshot
        recorded = await conn.fetchval(_CLAIM, mode)
    if recorded != mode:
        raise RelayModeError(
            f"the outbox is relayed {recorded}: an {mode} relay cannot run beside {recorded} "
            f"ones. Start it {_FLAG[recorded]}, or stop every relay and run "
            f"`hookbus outbox mode {mode} --yes`"
        )


async def switch_mode(conn: Any, mode: Mode) -> int:
    """Switch the outbox to ``mode`` (inside the caller's transaction, relays stopped); the
    rows marked sent (to unordered) or deleted as sent (to ordered)."""
    await conn.execute("LOCK TABLE hookbus_outbox_mode IN EXCLUSIVE MODE")
    if mode == "unordered":
        done: str = await conn.execute(_TO_UNORDERED)
        await conn.execute("DELETE FROM hookbus_outbox_cursor")
    else:
        done = await conn.execute(_TO_ORDERED)
    changed = int(done.split()[-1])
    await conn.execute(_SET, mode)
    return changed
