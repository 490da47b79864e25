"""Dispatch benchmark: hookbus against a hand-written floor and against its peers.

Run from the repository root::

    .venv/bin/python benchmarks/dispatch.py              # full run (about 15 s)
    .venv/bin/python benchmarks/dispatch.py --quick      # smoke run, about 2 s (CI)
    .venv/bin/python benchmarks/dispatch.py --json out.json --check

Every figure to quote is a ratio: each sample of hookbus (or of a peer) is paired with a sample
of the floor taken right beside it, in the same round of the same process, and the table shows
the median of those paired ratios (see ``_timing.py``). The nanoseconds are printed for
orientation only: this machine's speed drifts by up to 1.6x within seconds.

Workloads (one event, ``after_add_entity``, dispatched with an ``EntityEvent`` payload):

``hit``         3 matching async hooks on one (event, entity type).
                Two floors over a precomputed tuple of the same hook functions. *Inline*:
                ``for h in HOOKS: await h(ev)`` written where the user dispatches, inside the
                timing loop (no coroutine of its own): what hand-written code pays. *Wrapped*:
                ``async def floor(ev): for h in HOOKS: await h(ev)``, called as
                ``await floor(ev)``: the inline loop plus one coroutine.
``selective``   40 events x 20 entity types, 200 hooks, 2 of them match. Floor: the loop over
                those 2.
``miss``        3 hooks on the event, none for the dispatched entity type. Floor:
                ``async def floor(event, ev): TABLE.get(event)``, an awaited coroutine doing one
                dict lookup.
``sync``        3 plain-function hooks. Floor: a loop of plain calls inside an awaited
                ``async def`` (as ``await bus.emit`` is awaited).
``categories``  the hit, inside ``hooks_control(ALLOW_ALL, "notification")`` (the hooks are in
                category ``integrity``, so all 3 still run). Floors: the hit floors.

Every workload has the wrapped floor (the column ``/wrapped``, the one the peers are paired
with); the async ones also the inline floor (``/inline``).

A second table, ``fresh vs cached key``: an application event keyed by an int (a user id,
an order id), with N hooks each selecting one key (``match_key``) and one hook for every
key, N = 10 and 200. ``cached`` dispatches one key over and over; ``fresh`` a key never
dispatched before at every call, after more keys than a table holds were seen. The ratio is
fresh / cached, paired like the others (target: at most 1.5x, whatever N).

A third table, ``application``: 3 async hooks on an application event whose payload is a
plain ``msgspec.Struct``: keyed by a field named ``sku`` (``app sku``: the class has no
attribute ``key`` and is never touched by the bus), by a field named ``key`` (``app key``),
unkeyed (``app none``). Floors: the wrapped and inline floors over the same hooks.

Targets (issue 14): hit <= 1.2x the inline floor; miss, sync and categories <= 1.05x, 1.2x and
1.2x the wrapped floor; selective <= 1.2x the wrapped floor; an application event keyed by a
field not named ``key`` <= 1.3x the wrapped floor; and hookbus faster than every peer on every
workload.

Peers, each in its fair idiom, paired with the same floor (dev-only dependencies):

- blinker: one ``Signal`` per event, receivers connected with ``sender=`` the entity type,
  ``await sig.send_async(etype, ev=ev)`` (``sig.send`` for sync receivers).
- pyee: one emitter per entity type, handlers on the event name; ``emit`` only schedules
  coroutine handlers as tasks, so the idiom that waits for them is
  ``em.emit(event, ev); await em.wait_for_complete()`` (a plain ``EventEmitter`` for sync).
- aiosignal: one frozen ``Signal`` per (event, entity type), found in a dict,
  ``await sig.send(ev)``; empty signals where nothing is connected. It awaits every
  receiver, so it has no sync case.
- Django: one ``Signal(use_caching=True)`` per event (as Django's model signals), receivers
  connected with ``sender=`` a class standing for the entity type (as a model class),
  ``await sig.asend(sender=cls, ev=ev)`` (``sig.send`` for sync receivers).
- pluggy: sync only (a hookspec per event; it cannot select by entity type).

``--instrumented [none|slow|all]`` times hookbus with ``hookbus_otel.instrument(bus,
dispatch_spans=...)`` on every bus (an SDK tracer and meter provider with no exporter, when
the SDK is installed): ``none`` (the default when the flag is given) is the default
instrumentation, spans of transaction scopes only, under which dispatch runs hookbus's own
entries; ``slow`` and ``all`` time every hook and make dispatch spans (``all``: one per
dispatch, with no hook spans).

Peers have no categories: their "categories" row runs their hit idiom. A miss is each peer's
idiom with nothing connected for that sender or type. Every subject and floor is checked,
before timing, to call exactly the hooks the workload expects.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import platform
import statistics
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from time import perf_counter_ns
from types import CodeType, FrameType, SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: measure the working tree's hookbus
    sys.path.insert(0, str(ROOT))

import aiosignal  # noqa: E402
import blinker  # noqa: E402
import django.dispatch  # noqa: E402
import msgspec  # noqa: E402
import pluggy  # noqa: E402
import pyee  # noqa: E402
import pyee.asyncio  # noqa: E402
from django.conf import settings  # noqa: E402

import hookbus  # noqa: E402
from benchmarks._timing import Pair, Subject, run_pairs, time_call  # noqa: E402

EVENT = "after_add_entity"
EVENTS = (EVENT, *(f"ev{i:02d}" for i in range(1, 40)))  # 40 events
ETYPES = ("Person", "Company", *(f"Type{i:02d}" for i in range(2, 20)))  # 20 entity types
PEERS = ("blinker", "pyee", "aiosignal", "django", "pluggy")


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    hooks: tuple[tuple[str, str], ...]  # (event, entity type) of each hook, in order
    etype: str  # the entity type dispatched (with EVENT)
    target: float | None  # hookbus / wrapped floor must not exceed this (None: no target)
    sync: bool = False
    categories: bool = False
    inline_target: float | None = None  # hookbus / inline floor must not exceed this

    @property
    def expected(self) -> int:
        return self.hooks.count((EVENT, self.etype))


def _selective() -> tuple[tuple[str, str], ...]:
    others = [(e, t) for e in EVENTS for t in ETYPES if (e, t) != (EVENT, "Person")]
    return (*others[::4][:198], (EVENT, "Person"), (EVENT, "Person"))


HIT = ((EVENT, "Person"),) * 3
WORKLOADS = (
    Workload("hit", HIT, "Person", None, inline_target=1.2),
    Workload("selective", _selective(), "Person", 1.2),
    Workload("miss", HIT, "Company", 1.05),
    Workload("sync", HIT, "Person", 1.2, sync=True),
    Workload("categories", HIT, "Person", 1.2, categories=True),
)


# Hooks do nothing; each factory returns a new function object (blinker and Django ignore a
# receiver connected twice), all sharing one code object, which is how they are counted.
def _async_hook() -> Callable[[Any], Awaitable[None]]:
    async def hook(ev: Any) -> None:
        return None

    return hook


def _sync_hook() -> Callable[[Any], None]:
    def hook(ev: Any) -> None:
        return None

    return hook


def _blinker_async() -> Callable[..., Awaitable[None]]:
    async def receiver(sender: Any, ev: Any) -> None:
        return None

    return receiver


def _blinker_sync() -> Callable[..., None]:
    def receiver(sender: Any, ev: Any) -> None:
        return None

    return receiver


def _django_async() -> Callable[..., Awaitable[None]]:
    async def receiver(sender: Any, **kwargs: Any) -> None:
        return None

    return receiver


def _django_sync() -> Callable[..., None]:
    def receiver(sender: Any, **kwargs: Any) -> None:
        return None

    return receiver


HOOK_CODES: frozenset[CodeType] = frozenset(
    f().__code__
    for f in (
        _async_hook,
        _sync_hook,
        _blinker_async,
        _blinker_sync,
        _django_async,
        _django_sync,
    )
)


def payload(w: Workload) -> hookbus.EntityEvent:
    return hookbus.EntityEvent(EVENT, w.etype, 1, {})


#: ``--instrumented``: the dispatch_spans mode to instrument every bus with, or None.
INSTRUMENT: str | None = None


def new_bus() -> hookbus.Bus:
    """A bus, instrumented as ``--instrumented`` asks."""
    bus = hookbus.Bus()
    if INSTRUMENT is not None:
        import hookbus_otel

        providers: dict[str, Any] = {}
        try:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.trace import TracerProvider
        except ImportError:  # the API alone: its no-op providers
            pass
        else:
            providers = {"tracer_provider": TracerProvider(), "meter_provider": MeterProvider()}
        hookbus_otel.instrument(bus, dispatch_spans=INSTRUMENT, **providers)
    return bus


def hookbus_and_floor(w: Workload) -> tuple[Subject, Subject]:
    """hookbus's subject and the wrapped floor (``benchmarks/versus.py`` reads this)."""
    subject, floor, _ = hookbus_and_floors(w)
    return subject, floor


def hookbus_and_floors(w: Workload) -> tuple[Subject, Subject, Subject | None]:
    """hookbus's subject, the wrapped floor, and the inline floor (async hits only)."""
    bus = new_bus()
    for name in EVENTS[1:]:
        bus.declare(name, hookbus.EntityEvent)
    registered: list[tuple[str, str, Callable[[Any], Any]]] = []
    for event, etype in w.hooks:
        fn: Callable[[Any], Any] = _sync_hook() if w.sync else _async_hook()
        bus.hook(event, select=hookbus.is_instance(etype), category="integrity")(fn)
        registered.append((event, etype, fn))
    ev = payload(w)
    context: Callable[[], AbstractContextManager[object]] = nullcontext
    if w.categories:
        context = lambda: hookbus.hooks_control(hookbus.ALLOW_ALL, "notification")  # noqa: E731
    subject = Subject("hookbus", bus.emit, (EVENT, ev), context)

    hooks = tuple(fn for event, etype, fn in registered if (event, etype) == (EVENT, w.etype))
    if w.expected == 0:
        table = {e: hooks for e in EVENTS}

        async def miss_floor(event: str, ev: Any) -> None:
            table.get(event)

        return subject, Subject("floor", miss_floor, (EVENT, ev)), None
    if w.sync:

        async def sync_floor(ev: Any) -> None:
            for h in hooks:
                h(ev)

        return subject, Subject("floor", sync_floor, (ev,)), None
    return subject, wrapped(hooks, ev), inline(hooks, ev)


def wrapped(hooks: tuple[Callable[[Any], Any], ...], ev: Any) -> Subject:
    """The wrapped floor: the hooks' loop in a coroutine function of its own, awaited."""

    async def floor(ev: Any) -> None:
        for h in hooks:
            await h(ev)

    return Subject("floor", floor, (ev,))


def inline(hooks: tuple[Callable[[Any], Any], ...], ev: Any) -> Subject:
    """The inline floor: ``for h in hooks: await h(ev)`` written in the timing loop itself."""

    async def timer(iterations: int) -> float:
        start = perf_counter_ns()
        for _ in range(iterations):
            for h in hooks:
                await h(ev)
        return (perf_counter_ns() - start) / iterations

    async def once(ev: Any) -> None:  # never timed: the subject's call, for completeness
        for h in hooks:
            await h(ev)

    return Subject("inline", once, (ev,), timer=timer)


def blinker_subject(w: Workload) -> Subject:
    signals = {e: blinker.Signal(e) for e in EVENTS}
    for event, etype in w.hooks:
        receiver = _blinker_sync() if w.sync else _blinker_async()
        signals[event].connect(receiver, sender=etype, weak=False)
    if w.sync:

        async def send(event: str, ev: Any) -> None:
            signals[event].send(ev.etype, ev=ev)

        return Subject("blinker", send, (EVENT, payload(w)))

    def send_async(event: str, ev: Any) -> Awaitable[object]:
        return signals[event].send_async(ev.etype, ev=ev)

    return Subject("blinker", send_async, (EVENT, payload(w)))


def pyee_subject(w: Workload) -> Subject:
    if w.sync:
        plain = {t: pyee.EventEmitter() for t in ETYPES}
        for event, etype in w.hooks:
            plain[etype].add_listener(event, _sync_hook())

        async def emit(event: str, ev: Any) -> None:
            plain[ev.etype].emit(event, ev)

        return Subject("pyee", emit, (EVENT, payload(w)))

    emitters = {t: pyee.asyncio.AsyncIOEventEmitter() for t in ETYPES}
    for event, etype in w.hooks:
        emitters[etype].add_listener(event, _async_hook())

    async def emit_and_wait(event: str, ev: Any) -> None:
        emitter = emitters[ev.etype]
        emitter.emit(event, ev)
        await emitter.wait_for_complete()

    return Subject("pyee", emit_and_wait, (EVENT, payload(w)))


def aiosignal_subject(w: Workload) -> Subject | None:
    if w.sync:
        return None
    signals: dict[tuple[str, str], aiosignal.Signal[Any]] = {
        (e, t): aiosignal.Signal((e, t)) for e in EVENTS for t in ETYPES
    }
    for key in w.hooks:
        signals[key].append(_async_hook())
    for signal in signals.values():
        signal.freeze()

    def send(event: str, ev: Any) -> Awaitable[None]:
        return signals[event, ev.etype].send(ev)

    return Subject("aiosignal", send, (EVENT, payload(w)))


def django_subject(w: Workload) -> Subject:
    if not settings.configured:
        settings.configure()
    senders = {t: type(t, (), {}) for t in ETYPES}  # stand-ins for model classes
    signals = {e: django.dispatch.Signal(use_caching=True) for e in EVENTS}
    for event, etype in w.hooks:
        receiver = _django_sync() if w.sync else _django_async()
        signals[event].connect(receiver, sender=senders[etype], weak=False)
    if w.sync:

        async def send(event: str, ev: Any) -> None:
            signals[event].send(sender=senders[ev.etype], ev=ev)

        return Subject("django", send, (EVENT, payload(w)))

    def asend(event: str, ev: Any) -> Awaitable[Any]:
        sender = senders[ev.etype]
        return signals[event].asend(sender=sender, ev=ev)  # type: ignore[no-any-return]

    return Subject("django", asend, (EVENT, payload(w)))


def pluggy_subject(w: Workload) -> Subject | None:
    if not w.sync:
        return None
    spec, impl = pluggy.HookspecMarker("bench"), pluggy.HookimplMarker("bench")

    def event_spec(ev: Any) -> None: ...

    pm = pluggy.PluginManager("bench")
    pm.add_hookspecs(type("Spec", (), {e: spec(event_spec) for e in EVENTS}))
    for i, (event, etype) in enumerate(w.hooks):
        assert etype == w.etype  # pluggy cannot select by entity type
        pm.register(SimpleNamespace(**{event: impl(_sync_hook())}), name=f"plugin{i}")
    callers = {e: getattr(pm.hook, e) for e in EVENTS}

    async def call(event: str, ev: Any) -> None:
        callers[event](ev=ev)

    return Subject("pluggy", call, (EVENT, payload(w)))


class Ping(msgspec.Struct):
    """An application payload keyed by an unbounded int (a user id, an order id)."""

    key: int


KEY_HOOKS = (10, 200)
KEY_TARGET = 1.5


async def key_pairs() -> list[Pair]:
    """Fresh key against cached key, on an event with ``n`` keyed hooks (see the docstring)."""
    pairs = []
    for n in KEY_HOOKS:
        bus = new_bus()
        bus.declare("ping", Ping)
        for i in range(n):
            bus.hook("ping", select=hookbus.match_key(i))(_async_hook())
        bus.hook("ping")(_async_hook())
        for key in range(10_000, 20_000):  # more keys than a table holds
            await bus.emit("ping", Ping(key))
        emit, keys = bus.emit, itertools.count(1_000_000)

        async def fresh(event: str, emit: Any = emit, keys: Iterator[int] = keys) -> None:
            await emit(event, Ping(next(keys)))

        async def cached(event: str, emit: Any = emit) -> None:
            await emit(event, Ping(-1))

        pairs.append(
            Pair(
                f"{n} hooks",
                Subject("fresh", fresh, ("ping",)),
                Subject("cached", cached, ("ping",)),
            )
        )
    return pairs


class _Placed(msgspec.Struct):
    sku: str
    qty: int


class _Keyed(msgspec.Struct):
    key: str
    qty: int


class _Plain(msgspec.Struct):
    qty: int


#: hookbus / wrapped floor for the application events (``None``: no target).
APP_TARGETS: dict[str, float | None] = {"app sku": 1.3, "app key": 1.3, "app none": None}


async def app_pairs() -> list[Pair]:
    """Application events, 3 async hooks each: keyed by ``sku``, keyed by ``key``, unkeyed.

    The payload classes are plain ``msgspec.Struct`` types (the first and last have no
    attribute ``key``). Floors: the wrapped and inline floors over the same hooks.
    """
    bus = new_bus()
    bus.declare("placed", _Placed, key="sku")
    bus.declare("keyed", _Keyed)
    bus.declare("plain", _Plain)
    cases = (
        ("app sku", "placed", _Placed("a", 1)),
        ("app key", "keyed", _Keyed("a", 1)),
        ("app none", "plain", _Plain(1)),
    )
    pairs = []
    for name, event, ev in cases:
        select = None if event == "plain" else hookbus.match_key("a")
        hooks = tuple(_async_hook() for _ in range(3))
        for fn in hooks:
            bus.hook(event, select=select)(fn)

        subject = Subject("hookbus", bus.emit, (event, ev))
        pairs.append(Pair(name, subject, wrapped(hooks, ev)))
        pairs.append(Pair(name, subject, inline(hooks, ev)))
    return pairs


def app_table(pairs: list[Pair]) -> tuple[str, bool]:
    head = f"{'application':<11} {'hookbus ns':>10} {'wrapped ns':>10}"
    head += f" {'hookbus/wrapped (IQR)':>26} {'hookbus/inline (IQR)':>26}  ok"
    lines, all_ok = [head, "-" * len(head)], True
    for name, target in APP_TARGETS.items():
        wrap = next(p for p in pairs if p.workload == name and p.floor.name == "floor")
        inl = next(p for p in pairs if p.workload == name and p.floor.name == "inline")
        ok = target is None or wrap.ratio <= target
        all_ok &= ok
        line = f"{name:<11} {statistics.median(wrap.subject_ns):>10.0f}"
        line += f" {statistics.median(wrap.floor_ns):>10.0f}"
        line += f" {_ratio(wrap, target):>26} {_ratio(inl, None):>26}"
        lines.append(line + ("  yes" if ok else "  NO"))
    return "\n".join(lines), all_ok


def key_table(pairs: list[Pair]) -> tuple[str, bool]:
    head = f"{'keyed event':<11} {'fresh ns':>10} {'cached ns':>9}"
    head += f" {'fresh/cached (IQR)':>21} {'target':>7}  ok"
    lines, all_ok = [head, "-" * len(head)], True
    for p in pairs:
        lo, hi = p.spread
        ok = p.ratio <= KEY_TARGET
        all_ok &= ok
        line = f"{p.workload:<11} {statistics.median(p.subject_ns):>10.0f}"
        line += f" {statistics.median(p.floor_ns):>9.0f}"
        line += f" {f'{p.ratio:.2f}x ({lo:.2f}-{hi:.2f})':>21} {f'<={KEY_TARGET}x':>7}"
        lines.append(line + ("  yes" if ok else "  NO"))
    return "\n".join(lines), all_ok


PEER_BUILDERS: tuple[Callable[[Workload], Subject | None], ...] = (
    blinker_subject,
    pyee_subject,
    aiosignal_subject,
    django_subject,
    pluggy_subject,
)


@contextmanager
def _counting_hook_calls() -> Iterator[list[int]]:
    count = [0]

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code in HOOK_CODES:
            count[0] += 1

    sys.setprofile(profile)
    try:
        yield count
    finally:
        sys.setprofile(None)


async def check(pair: Pair, expected: int) -> None:
    """Refuse to time a subject or floor that does not call exactly the expected hooks."""
    for subject in (pair.subject, pair.floor):
        with _counting_hook_calls() as count:
            await time_call(subject, 1)
        if count[0] != expected:
            raise SystemExit(
                f"{pair.workload}/{subject.name}: called {count[0]} hooks, expected {expected}"
            )


def build(with_peers: bool) -> list[Pair]:
    pairs = []
    for w in WORKLOADS:
        subject, floor, inline_floor = hookbus_and_floors(w)
        pairs.append(Pair(w.name, subject, floor))
        if inline_floor is not None:
            pairs.append(Pair(w.name, subject, inline_floor))
        for builder in PEER_BUILDERS if with_peers else ():
            peer = builder(w)
            if peer is not None:
                pairs.append(Pair(w.name, peer, floor))
    return pairs


def _ratio(pair: Pair | None, target: float | None) -> str:
    """``1.13x (1.10-1.17) <=1.2``: a pair's median ratio, its IQR and its target."""
    if pair is None:
        return "-"
    lo, hi = pair.spread
    aim = "" if target is None else f" <={target:g}"
    return f"{pair.ratio:.2f}x ({lo:.2f}-{hi:.2f}){aim}"


def table(pairs: list[Pair]) -> tuple[str, bool]:
    head = f"{'workload':<11} {'hookbus ns':>10} {'wrapped ns':>10} {'inline ns':>9}"
    head += f" {'hookbus/wrapped (IQR)':>26} {'hookbus/inline (IQR)':>26}"
    head += "".join(f" {p:>9}" for p in PEERS) + "  ok"
    lines, all_ok = [head, "-" * len(head)], True
    for w in WORKLOADS:
        rows = {
            p.subject.name: p for p in pairs if p.workload == w.name and p.floor.name == "floor"
        }
        hb = rows["hookbus"]
        inline = next((p for p in pairs if p.workload == w.name and p.floor.name == "inline"), None)
        peers = [rows[p].ratio for p in PEERS if p in rows]
        ok = (w.target is None or hb.ratio <= w.target) and all(hb.ratio < r for r in peers)
        if inline is not None and w.inline_target is not None:
            ok &= inline.ratio <= w.inline_target
        all_ok &= ok
        line = f"{w.name:<11} {statistics.median(hb.subject_ns):>10.0f}"
        line += f" {statistics.median(hb.floor_ns):>10.0f}"
        line += f" {'-' if inline is None else f'{statistics.median(inline.floor_ns):.0f}':>9}"
        line += f" {_ratio(hb, w.target):>26} {_ratio(inline, w.inline_target):>26}"
        line += "".join(f" {f'{rows[p].ratio:.2f}x' if p in rows else '-':>9}" for p in PEERS)
        lines.append(line + ("  yes" if ok else "  NO"))
    return "\n".join(lines), all_ok


def versions() -> dict[str, str]:
    names = ("msgspec", "blinker", "pyee", "aiosignal", "django", "pluggy")
    return {"python": platform.python_version(), **{n: version(n) for n in names}}


async def measure(args: argparse.Namespace) -> tuple[list[Pair], list[Pair], list[Pair]]:
    pairs = build(not args.no_peers)
    for w in WORKLOADS:
        for pair in (p for p in pairs if p.workload == w.name):
            await check(pair, w.expected)
    keyed = await key_pairs()
    for pair in keyed:
        await check(pair, 1)
    app = await app_pairs()
    for pair in app:
        await check(pair, 3)
    await run_pairs([*pairs, *keyed, *app], args.rounds, args.sample_ms * 1e6)
    return pairs, keyed, app


def as_json(pairs: list[Pair], args: argparse.Namespace) -> str:
    results = [
        {
            "workload": p.workload,
            "subject": p.subject.name,
            "floor": p.floor.name,
            "ratio": p.ratio,
            "subject_ns": p.subject_ns,
            "floor_ns": p.floor_ns,
            "iterations": p.iterations,
        }
        for p in pairs
    ]
    data = {"versions": versions(), "rounds": args.rounds, "sample_ms": args.sample_ms}
    return json.dumps({**data, "results": results}, indent=2)


def main() -> int:
    parser = argparse.ArgumentParser(description="hookbus dispatch benchmark, ratios to a floor")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 21; quick: 5)")
    parser.add_argument("--sample-ms", type=float, help="length of one sample (default 10 ms)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--no-peers", action="store_true", help="time hookbus and floors only")
    parser.add_argument("--json", metavar="PATH", help="also write all samples ('-': stdout)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--instrumented",
        nargs="?",
        const="none",
        choices=("none", "slow", "all"),
        help="hookbus_otel on every bus, with these dispatch spans (default: none)",
    )
    args = parser.parse_args()
    global INSTRUMENT
    INSTRUMENT = args.instrumented
    args.rounds = args.rounds or (5 if args.quick else 21)
    args.sample_ms = args.sample_ms or (2.0 if args.quick else 10.0)
    v = versions()
    print(
        f"hookbus dispatch benchmark: Python {v['python']} ({platform.machine()}), "
        + ", ".join(f"{k} {v[k]}" for k in list(v)[1:])
    )
    if INSTRUMENT is not None:
        print(f"instrumented: hookbus_otel.instrument(bus, dispatch_spans={INSTRUMENT!r})")
    print(
        f"{args.rounds} rounds of {args.sample_ms:g} ms samples, interleaved, gc off in samples."
        "\nmachine note: this machine's speed drifts by up to 1.6x within seconds;"
        " quote the ratios, not the ns.\n"
    )
    pairs, keyed, app = asyncio.run(measure(args))
    text, ok = table(pairs)
    print(text)
    keys_text, keys_ok = key_table(keyed)
    print("\n" + keys_text)
    ok &= keys_ok
    app_text, app_ok = app_table(app)
    print("\n" + app_text)
    ok &= app_ok
    print(
        "\nhookbus/floor and peers: median over rounds of (subject ns / floor ns), each sample"
        "\ntimed right beside its floor sample (peers: beside the wrapped floor); '-': no such"
        "\nidiom; ok: targets met and hookbus faster than every peer. ns are medians, for"
        "\norientation only."
    )
    if args.json == "-":
        print(as_json([*pairs, *keyed, *app], args))
    elif args.json:
        Path(args.json).write_text(as_json([*pairs, *keyed, *app], args) + "\n")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
