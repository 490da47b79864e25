"""``hookbus outbox relay|status|cleanup|reset|mode``: the outbox's worker and its upkeep.

The database is ``--dsn``, else ``HOOKBUS_DSN``. NATS is configured as the ``nats`` CLI and
nats-py users configure it: ``--server`` (else ``NATS_URL``, else nats://127.0.0.1:4222),
``--creds`` (``NATS_CREDS``), ``--nkey`` (``NATS_NKEY``), ``--user``/``--password``
(``NATS_USER``/``NATS_PASSWORD``), ``--token`` (``NATS_TOKEN``), ``--tlscert``/``--tlskey``/
``--tlsca`` (``NATS_CERT``/``NATS_KEY``/``NATS_CA``). Prefer the variables and files: a
command line is visible to every user of the machine. No message shows a password, a token or
credentials. asyncpg and nats are imported when a command runs, never when ``hookbus --help``
lists this one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from datetime import timedelta
from typing import Any, Final

from hookbus.cli import CommandError, ExitStatus, add_dsn_option, dsn_from

from ._nats_options import add_nats_options, connect_options, shown_servers

__all__ = ["OutboxCommand", "outbox"]


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


class OutboxCommand:
    """``hookbus outbox``: a command with sub-verbs (see the module's docstring)."""

    summary = "the outbox to NATS JetStream: relay, status, cleanup, reset, mode"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
        relay = verbs.add_parser(
            "relay",
            help="publish committed outbox rows until SIGTERM (one active per --name)",
            description="Publish committed outbox rows to JetStream in commit order. A second "
            "relay of the same --name waits as a standby. SIGTERM or SIGINT: the batch in "
            "flight is finished and its cursor saved, then the relay exits. With --unordered: "
            "several relays run side by side, in no order (docs/outbox.md).",
        )
        add_dsn_option(relay)
        add_nats_options(relay)
        relay.add_argument("--stream", required=True, help="the stream the subjects go to")
        relay.add_argument(
            "--name",
            default="default",
            help="the relay's cursor and lock (with --unordered: only its name in the logs)",
        )
        relay.add_argument(
            "--unordered",
            action="store_true",
            help="no order: run as many as you like, each claiming rows with FOR UPDATE SKIP "
            "LOCKED (never beside ordered relays on one outbox)",
        )
        relay.add_argument("--batch-size", type=int, default=1000)
        relay.add_argument("--poll-interval", type=_seconds, default=1.0, metavar="SECONDS")
        relay.add_argument(
            "--retry-horizon",
            type=_seconds,
            default=60.0,
            metavar="SECONDS",
            help="the longest time a row may be re-sent after its first send; the stream's "
            "duplicate window must be at least this (default 60)",
        )
        relay.add_argument(
            "--retention",
            type=_seconds,
            default=3600.0,
            metavar="SECONDS",
            help="delete published rows older than this (default 3600)",
        )
        relay.add_argument(
            "--start-wait",
            type=_seconds,
            default=60.0,
            metavar="SECONDS",
            help="at the start, wait this long for JetStream to answer for the stream "
            "(a cluster electing a leader) before failing (default 60)",
        )
        relay.add_argument(
            "--stats-interval", type=_seconds, default=60.0, metavar="SECONDS",
            help="log the counters this often (default 60)",
        )  # fmt: skip
        status = verbs.add_parser("status", help="the counters: published, pending, lag")
        add_dsn_option(status)
        status.add_argument("--name", default="default")
        status.add_argument("--json", action="store_true", help="one JSON object")
        cleanup = verbs.add_parser("cleanup", help="delete published rows past a retention")
        add_dsn_option(cleanup)
        cleanup.add_argument("--retention", type=_seconds, default=3600.0, metavar="SECONDS")
        reset = verbs.add_parser(
            "reset",
            help="after a restore: re-send every row the outbox holds, from the start",
            description="For a database restored from a dump, where the relay refuses to run "
            "because its cursor is ahead of the server's transaction ids: every row the "
            "outbox holds is re-sent (JetStream and the consumers' inbox drop those already "
            "seen, by message id). Takes the relay's lock: stop the relays first.",
        )
        add_dsn_option(reset)
        reset.add_argument("--name", default="default")
        reset.add_argument("--yes", action="store_true", help="do it (else: say what it does)")
        mode = verbs.add_parser(
            "mode",
            help="switch the outbox between ordered and unordered relays (relays stopped)",
            description="The outbox records the mode of the relays that run on it; a relay of "
            "the other mode refuses to start. Stop every relay, then switch: to unordered, "
            "the rows every cursor has passed are marked sent and the cursors dropped; to "
            "ordered, the rows marked sent are deleted (a new cursor sends the rest).",
        )
        add_dsn_option(mode)
        mode.add_argument("mode", choices=("ordered", "unordered"))
        mode.add_argument("--yes", action="store_true", help="do it (else: say what it does)")

    def run(self, args: argparse.Namespace) -> int:
        dsn = dsn_from(args, required=True)
        assert dsn is not None
        verb = {
            "relay": _relay,
            "status": _status,
            "cleanup": _cleanup,
            "reset": _reset,
            "mode": _mode,
        }
        try:
            return asyncio.run(verb[args.verb](args, dsn))
        except OSError as exc:
            raise CommandError(f"cannot connect: {exc}", ExitStatus.FAILURE) from None


outbox: Final = OutboxCommand()


async def _relay(args: argparse.Namespace, dsn: str) -> int:
    import nats
    from nats.js.errors import NotFoundError

    from ._relay import Relay
    from ._relay_errors import RelayError
    from ._relay_unordered import UnorderedRelay
    from ._startup import JetStreamNotReadyError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    options = connect_options(args)
    try:
        nc = await nats.connect(**options, max_reconnect_attempts=-1)
    except Exception as exc:
        raise CommandError(
            f"cannot connect to NATS at {shown_servers(options)}: {type(exc).__name__}",
            ExitStatus.FAILURE,
        ) from None
    kind = UnorderedRelay if args.unordered else Relay
    relay: Relay | UnorderedRelay = kind(
        dsn,
        nc,
        stream=args.stream,
        name=args.name,
        batch_size=args.batch_size,
        poll_interval=args.poll_interval,
        retry_horizon=args.retry_horizon,
        retention=timedelta(seconds=args.retention),
        start_wait=args.start_wait,
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, relay.stop)
    reporter = asyncio.create_task(_report(relay, args.stats_interval))
    try:
        await relay.run()
    except NotFoundError:
        raise CommandError(f"no stream named {args.stream!r}", ExitStatus.NOT_FOUND) from None
    except RelayError as exc:
        raise CommandError(str(exc), ExitStatus.REFUSED) from None
    except JetStreamNotReadyError as exc:
        raise CommandError(str(exc), ExitStatus.FAILURE) from None
    except Exception as exc:
        raise CommandError(f"{type(exc).__name__}: {exc}", ExitStatus.FAILURE) from None
    finally:
        reporter.cancel()
        await nc.drain()
    _log_stats(relay)
    return ExitStatus.OK


def _log_stats(relay: Any) -> None:
    stats = relay.stats()
    ordered = hasattr(stats, "cursor")
    extra = ""
    if ordered:
        cursor = None if stats.cursor is None else (stats.cursor.xid, stats.cursor.id)
        held = "" if stats.held_back is None else f"; held back: {stats.held_back.describe()}"
        extra = f", cursor {cursor}{held}"
    logging.getLogger("hookbus.outbox").info(
        "relay %r%s %s: published %d (%d duplicates), %d batches, %d retries%s",
        relay.name,
        "" if ordered else " (unordered)",
        stats.state.value,
        stats.published,
        stats.duplicates,
        stats.batches,
        stats.retries,
        extra,
    )


async def _report(relay: Any, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        _log_stats(relay)


async def _status(args: argparse.Namespace, dsn: str) -> int:
    import asyncpg
    import msgspec

    from ._relay_mode import read_mode
    from ._relay_sql import holdback, status, unordered_status

    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT to_regclass('hookbus_outbox')") is None:
            raise CommandError(
                "no outbox in this database: install the hookbus_outbox plugin",
                ExitStatus.NOT_FOUND,
            )
        if await read_mode(conn) == "unordered":
            found, held = await unordered_status(conn, args.name), None
        else:
            found = await status(conn, args.name)
            held = await holdback(conn, found.cursor)
    finally:
        await conn.close()
    body = msgspec.to_builtins(found)
    common = [
        ("pending", found.pending),
        ("oldest pending", found.oldest_pending or "-"),
        ("lag", found.lag or "-"),
        ("rows kept", found.rows),
    ]
    if found.mode == "unordered":  # no cursor, no relay name, nothing held back
        del body["cursor"], body["relay"]
        rows = [("mode", "unordered"), ("sent (kept)", found.published), *common]
        rows.append(("last sent", found.updated_at or "never"))
    else:
        body["held_back"] = msgspec.to_builtins(held)
        rows = [
            ("relay", found.relay),
            ("cursor", f"({found.cursor.xid}, {found.cursor.id})"),
            ("published", found.published),
            *common,
            ("cursor moved", found.updated_at or "never"),
            ("held back by", "-" if held is None else held.describe()),
        ]
    if args.json:
        sys.stdout.write(msgspec.json.encode(body).decode() + "\n")
        return ExitStatus.OK
    for label, value in rows:
        print(f"{label:<15} {value}")
    return ExitStatus.OK


async def _cleanup(args: argparse.Namespace, dsn: str) -> int:
    import asyncpg

    from ._relay_sql import cleanup

    conn = await asyncpg.connect(dsn)
    total = 0
    try:
        while deleted := await cleanup(conn, timedelta(seconds=args.retention)):
            total += deleted
    finally:
        await conn.close()
    print(f"deleted {total} published row(s) older than {args.retention:g} s")
    return ExitStatus.OK


async def _reset(args: argparse.Namespace, dsn: str) -> int:
    import asyncpg
    from hookbus_asyncpg import FencedLock, LockTimeoutError

    from ._relay_sql import reset_cursor

    if not args.yes:
        print(
            "reset re-sends every row the outbox holds (consumers drop those seen by message "
            "id) and restarts the cursor; stop the relays, then run it again with --yes"
        )
        return ExitStatus.OK
    async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool:
        try:
            async with (
                FencedLock(pool, f"hookbus.outbox.{args.name}", wait=5.0) as lock,
                pool.acquire() as conn,
                conn.transaction(),
            ):
                await lock.fence(conn)
                count = await reset_cursor(conn)
        except LockTimeoutError as exc:
            raise CommandError(f"a relay is running: {exc}", ExitStatus.BUSY) from None
    print(f"reset: {count} row(s) will be sent again")
    return ExitStatus.OK


async def _mode(args: argparse.Namespace, dsn: str) -> int:
    import asyncpg

    from ._relay_mode import read_mode

    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT to_regclass('hookbus_outbox_mode')") is None:
            raise CommandError(
                "no outbox at layout 1.1 in this database: install the hookbus_outbox plugin "
                "(or `hookbus migrate` one at 1.0)",
                ExitStatus.NOT_FOUND,
            )
        was = await read_mode(conn)
        names = [row[0] for row in await conn.fetch("SELECT relay FROM hookbus_outbox_cursor")]
    finally:
        await conn.close()
    if was == args.mode:
        print(f"the outbox is relayed {args.mode} already")
        return ExitStatus.OK
    if not args.yes:
        what = (
            "marks sent the rows every cursor has passed and drops the cursors"
            if args.mode == "unordered"
            else "deletes the rows marked sent (a new cursor sends the others)"
        )
        print(
            f"switching to {args.mode} {what}; stop every relay of this outbox, then run it "
            "again with --yes"
        )
        return ExitStatus.OK
    changed = await _switch(dsn, args.mode, names)
    done = "marked sent" if args.mode == "unordered" else "deleted as sent"
    print(f"the outbox is relayed {args.mode} (was {was or 'unset'}); {changed} row(s) {done}")
    return ExitStatus.OK


async def _switch(dsn: str, mode: Any, names: list[str]) -> int:
    """Switch under the lock of every ordered relay's name and the unordered relays' lock:
    refused while a relay runs, and none starts before the switch commits."""
    import contextlib

    import asyncpg
    from hookbus_asyncpg import FencedLock, LockTimeoutError

    from ._relay_mode import switch_mode, unordered_running

    async with asyncpg.create_pool(dsn, min_size=1, max_size=len(names) + 2) as pool:
        try:
            async with contextlib.AsyncExitStack() as stack:
                for name in names:
                    lock = FencedLock(pool, f"hookbus.outbox.{name}", wait=1.0)
                    await stack.enter_async_context(lock)
                conn = await stack.enter_async_context(pool.acquire())
                await stack.enter_async_context(conn.transaction())
                if await unordered_running(conn):
                    raise CommandError(
                        "an unordered relay is running: stop every relay of this outbox first",
                        ExitStatus.BUSY,
                    )
                return await switch_mode(conn, mode)
        except LockTimeoutError as exc:
            raise CommandError(
                f"an ordered relay is running ({exc}): stop every relay of this outbox first",
                ExitStatus.BUSY,
            ) from None
