"""``hookbus consume`` and ``hookbus dead-letters list|replay``: the consumer's workers.

``hookbus consume MODULE:BUS --stream S --name N`` runs a :class:`~hookbus_nats.Consumer`
until SIGTERM or SIGINT, which finish the batch in hand and acknowledge what committed; its
counters go to standard error every ``--stats-every`` seconds and at exit. ``hookbus
dead-letters list`` shows the dead letters (of one consumer with ``--consumer``), ``hookbus
dead-letters replay`` republishes them (``--all``, or by sequence) to their original subjects.
The database is ``--dsn``, else ``HOOKBUS_DSN``; NATS as :mod:`._nats_options` says. Nothing
printed shows a password, a token or a credentials file's content.

Registered in the ``hookbus.commands`` entry-point group; nats and asyncpg are imported when a
command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, final

from hookbus import Bus
from hookbus.cli import CommandError, ExitStatus, add_dsn_option, dsn_from, load_object

from ._dead_letters import DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM
from ._nats_options import add_nats_options, connect_options, shown_servers

if TYPE_CHECKING:
    from ._consumer import Consumer

__all__ = ["ConsumeCommand", "DeadLettersCommand", "consume", "dead_letters"]

logger: Final = logging.getLogger("hookbus.nats")


def _delays(text: str) -> tuple[float, ...]:
    try:
        delays = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds such as 1,5,30, not {text!r}") from None
    if not delays or min(delays) < 0:
        raise argparse.ArgumentTypeError(f"expected delays >= 0, not {text!r}")
    return delays


def _load_bus(spec: str) -> Bus:
    found: object = load_object(spec, object, "a hookbus.Bus")
    if callable(found) and not isinstance(found, Bus):
        found = found()
    if not isinstance(found, Bus):
        raise CommandError(f"{spec} is a {type(found).__qualname__}, not a hookbus.Bus")
    return found


async def _connect(args: argparse.Namespace) -> Any:
    import nats

    options = connect_options(args)

    async def quiet(exc: Exception) -> None:  # one line, never a traceback or a URL
        logger.warning("NATS: %s", type(exc).__name__)

    try:
        nc = await nats.connect(
            **options, connect_timeout=5, max_reconnect_attempts=2, error_cb=quiet
        )
    except Exception as exc:  # the message names the servers only as they may be shown
        raise CommandError(
            f"NATS at {shown_servers(options)} does not answer ({type(exc).__name__})",
            ExitStatus.FAILURE,
        ) from None
    # Connected once: a worker now reconnects for as long as it runs.
    nc.options["max_reconnect_attempts"] = -1
    return nc


def _add_dead_letter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dead-letter-stream",
        default=DEAD_LETTER_STREAM,
        metavar="NAME",
        help=f"the stream keeping dead letters (default {DEAD_LETTER_STREAM})",
    )
    parser.add_argument(
        "--dead-letter-prefix",
        default=DEAD_LETTER_PREFIX,
        metavar="SUBJECT",
        help=f"dead letters go to PREFIX.<consumer> (default {DEAD_LETTER_PREFIX})",
    )


def _counters(consumer: Consumer) -> str:
    stats = consumer.statistics()
    fields = ", ".join(f"{name} {getattr(stats, name)}" for name in stats.__struct_fields__)
    return f"consume {consumer.name}: {fields}"


@final
class ConsumeCommand:
    """``hookbus consume``: apply a stream's events through a bus's hooks, once each."""

    summary: Final = "apply a NATS JetStream stream's events once each (hookbus_nats)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("app", metavar="MODULE:BUS", help="the hookbus.Bus whose hooks apply")
        parser.add_argument("--stream", required=True, help="the JetStream stream")
        parser.add_argument("--name", required=True, help="the durable consumer (and inbox key)")
        parser.add_argument("--subject", default=None, help="only this subject (a key range)")
        parser.add_argument("--batch", type=int, default=500, help="messages per fetch (500)")
        parser.add_argument("--ack-wait", type=float, default=30.0, help="seconds (30)")
        parser.add_argument("--max-deliver", type=int, default=10, help="deliveries (10)")
        parser.add_argument(
            "--backoff",
            type=_delays,
            default=(1.0, 5.0, 30.0, 120.0),
            help="retry delays of a failing message, seconds (1,5,30,120)",
        )
        parser.add_argument(
            "--max-ack-pending", type=int, default=None, help="in flight at most (1: strict order)"
        )
        parser.add_argument(
            "--retention-hours",
            type=float,
            default=None,
            help="inbox rows kept (default: as long as the stream keeps messages)",
        )
        parser.add_argument(
            "--start-wait",
            type=float,
            default=60.0,
            help="seconds to wait at the start for JetStream to answer for the stream "
            "(a cluster electing a leader) before failing (60)",
        )
        parser.add_argument("--pool-size", type=int, default=4, help="PostgreSQL connections (4)")
        parser.add_argument(
            "--stats-every", type=float, default=30.0, help="seconds between counter lines (30)"
        )
        _add_dead_letter_options(parser)
        add_dsn_option(parser)
        add_nats_options(parser)

    def run(self, args: argparse.Namespace) -> int:
        dsn = dsn_from(args, required=True)
        assert dsn is not None
        bus = _load_bus(args.app)
        return asyncio.run(self._consume(args, dsn, bus))

    async def _consume(self, args: argparse.Namespace, dsn: str, bus: Bus) -> int:
        import asyncpg

        from ._consumer import Consumer

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        nc = await _connect(args)
        try:
            async with asyncpg.create_pool(dsn, min_size=1, max_size=args.pool_size) as pool:
                retention = (
                    None if args.retention_hours is None else timedelta(hours=args.retention_hours)
                )
                consumer = Consumer(
                    bus, pool, nc, name=args.name, stream=args.stream,
                    subject=args.subject, batch=args.batch, ack_wait=args.ack_wait,
                    max_deliver=args.max_deliver, backoff=args.backoff,
                    max_ack_pending=args.max_ack_pending, retention=retention,
                    dead_letter_stream=args.dead_letter_stream,
                    dead_letter_prefix=args.dead_letter_prefix,
                    start_wait=args.start_wait,
                )  # fmt: skip
                return await _until_signalled(consumer, args.stats_every)
        finally:
            with contextlib.suppress(Exception):
                await nc.flush(5)  # the acknowledgements still buffered go out first
            await nc.close()


async def _until_signalled(consumer: Consumer, every: float) -> int:
    from ._consumer_state import ConsumerError
    from ._startup import JetStreamNotReadyError

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, consumer.stop)
    report = asyncio.create_task(_report(consumer, every))
    try:
        try:
            await consumer.start()
        except (JetStreamNotReadyError, ConsumerError) as exc:  # one line, no traceback
            raise CommandError(str(exc), ExitStatus.FAILURE) from None
        from ._consumer_state import ConsumerState

        if consumer.state is ConsumerState.STOPPED:  # a signal during the wait for JetStream
            return ExitStatus.OK
        print(f"consume {consumer.name}: started", file=sys.stderr, flush=True)
        await consumer.run()
    finally:
        report.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await report
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        print(_counters(consumer), file=sys.stderr, flush=True)
    return ExitStatus.OK


async def _report(consumer: Consumer, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        print(_counters(consumer), file=sys.stderr, flush=True)


@final
class DeadLettersCommand:
    """``hookbus dead-letters list|replay``: what consumers could not apply, and replaying it."""

    summary: Final = "list or replay the dead letters of NATS consumers (hookbus_nats)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        verbs = parser.add_subparsers(dest="verb", required=True, metavar="list|replay")
        listing = verbs.add_parser("list", help="the dead letters, oldest first")
        replay = verbs.add_parser("replay", help="republish dead letters to their subjects")
        replay.add_argument("seqs", nargs="*", type=int, metavar="SEQ", help="these only")
        replay.add_argument("--all", action="store_true", help="every dead letter shown by list")
        for verb in (listing, replay):
            verb.add_argument("--consumer", default=None, help="one consumer's (default: all)")
            _add_dead_letter_options(verb)
            add_nats_options(verb)

    def run(self, args: argparse.Namespace) -> int:
        work: Coroutine[Any, Any, int]
        if args.verb == "list":
            work = self._list(args)
        else:
            if not args.seqs and not args.all:
                raise CommandError("name the dead letters to replay (SEQ ...), or --all")
            work = self._replay(args)
        return asyncio.run(work)

    async def _list(self, args: argparse.Namespace) -> int:
        from ._dead_letters import list_dead_letters

        nc = await _connect(args)
        try:
            rows = [("seq", "consumer", "event", "reason", "deliveries", "failed at", "detail")]
            async for stored in list_dead_letters(
                nc.jetstream(), args.consumer,
                stream=args.dead_letter_stream, prefix=args.dead_letter_prefix,
            ):  # fmt: skip
                d = stored.letter
                rows.append((
                    str(stored.seq), d.consumer, d.event or "-", d.reason.value,
                    str(d.deliveries), d.failed_at.isoformat(timespec="seconds"), d.detail,
                ))  # fmt: skip
        finally:
            await nc.close()
        if len(rows) == 1:
            print("no dead letters")
            return ExitStatus.OK
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            print("  ".join([*cells, row[-1]]))
        return ExitStatus.OK

    async def _replay(self, args: argparse.Namespace) -> int:
        from ._dead_letters import replay_dead_letters

        nc = await _connect(args)
        done = 0
        try:
            async for replayed in replay_dead_letters(
                nc.jetstream(), args.consumer, seqs=None if args.all else args.seqs,
                stream=args.dead_letter_stream, prefix=args.dead_letter_prefix,
            ):  # fmt: skip
                done += 1
                print(f"replayed {replayed.seq} to {replayed.subject} ({replayed.msg_id})")
        finally:
            await nc.close()
        if not done:
            raise CommandError("no dead letter to replay", ExitStatus.NOT_FOUND)
        return ExitStatus.OK


consume: Final = ConsumeCommand()
dead_letters: Final = DeadLettersCommand()
