"""Paired, interleaved timing of awaited calls, for benchmarks that quote ratios.

This machine's speed drifts (up to 1.6x within seconds), so a number of nanoseconds means
little on its own. Every measured call is paired with a floor sample taken right beside it,
in the same round and the same process; the order inside a pair alternates from round to
round (so a drift in one direction favours neither side), and the pairs of every case are
interleaved within each round. The figure to quote is the median of the per-round ratios.

The garbage collector is disabled while a sample runs (and run between rounds), so that a
collection triggered by one side's allocations does not land in the other side's sample.
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any

AsyncCall = Callable[..., Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Subject:
    """One thing to time: ``await call(*args)``, inside ``context()`` when given.

    ``args`` has one or two items, so that the timing loop itself never packs arguments.
    ``timer``, when given, replaces the timing loop: ``await timer(iterations)`` returns the
    mean ns per iteration (for a floor whose work is written inside the loop, with no call).
    """

    name: str
    call: AsyncCall
    args: tuple[Any, ...]
    context: Callable[[], AbstractContextManager[object]] = nullcontext
    timer: Callable[[int], Awaitable[float]] | None = None


@dataclass(slots=True)
class Pair:
    """A subject and the floor it is paired with, and what the rounds measured (ns/call)."""

    workload: str
    subject: Subject
    floor: Subject
    subject_ns: list[float] = field(default_factory=list)
    floor_ns: list[float] = field(default_factory=list)
    iterations: tuple[int, int] = (0, 0)

    @property
    def ratios(self) -> list[float]:
        return [s / f for s, f in zip(self.subject_ns, self.floor_ns, strict=True)]

    @property
    def ratio(self) -> float:
        """Median of the paired ratios: the figure to quote."""
        return statistics.median(self.ratios)

    @property
    def spread(self) -> tuple[float, float]:
        """First and third quartiles of the paired ratios."""
        q = statistics.quantiles(self.ratios, n=4) if len(self.ratios) > 1 else self.ratios * 3
        return q[0], q[2]


async def time_call(subject: Subject, iterations: int) -> float:
    """Mean ns per ``await subject.call(*subject.args)`` over ``iterations`` calls."""
    if subject.timer is not None:
        with subject.context():
            return await subject.timer(iterations)
    call, args = subject.call, subject.args
    with subject.context():
        if len(args) == 1:
            (a,) = args
            start = perf_counter_ns()
            for _ in range(iterations):
                await call(a)
            end = perf_counter_ns()
        else:
            a, b = args
            start = perf_counter_ns()
            for _ in range(iterations):
                await call(a, b)
            end = perf_counter_ns()
    return (end - start) / iterations


async def calibrate(subject: Subject, sample_ns: float, max_iterations: int) -> int:
    """Warm ``subject`` up and return the iteration count for a sample of ``sample_ns``."""
    iterations = 64
    spent = 0.0
    per_call = await time_call(subject, iterations)
    while spent < sample_ns:  # warm-up: at least one sample's worth of calls
        per_call = await time_call(subject, iterations)
        spent += per_call * iterations
        iterations = min(iterations * 2, max_iterations)
    return max(64, min(max_iterations, round(sample_ns / per_call)))


async def run_pairs(
    pairs: Sequence[Pair],
    rounds: int,
    sample_ns: float,
    max_iterations: int = 50_000,
) -> None:
    """Fill every pair's samples: ``rounds`` rounds, each visiting every pair once."""
    for pair in pairs:
        pair.iterations = (
            await calibrate(pair.subject, sample_ns, max_iterations),
            await calibrate(pair.floor, sample_ns, max_iterations),
        )
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            for pair in pairs:
                n_subject, n_floor = pair.iterations
                if r % 2:
                    floor_ns = await time_call(pair.floor, n_floor)
                    subject_ns = await time_call(pair.subject, n_subject)
                else:
                    subject_ns = await time_call(pair.subject, n_subject)
                    floor_ns = await time_call(pair.floor, n_floor)
                pair.subject_ns.append(subject_ns)
                pair.floor_ns.append(floor_ns)
            gc.collect()
    finally:
        gc.enable()


async def interleaved(
    sides: dict[str, Callable[[], Awaitable[object]]], rounds: int, batch: int, warm_up: int = 20
) -> dict[str, list[float]]:
    """The mean seconds of ``await side()`` in each round, per side: for heavy calls (a
    transaction) that are timed one by one, one call of each side in turn, the order rotating
    every round, so that a change of the machine's load falls on all sides alike."""
    names = list(sides)
    for side in sides.values():  # prepared statements, caches
        for _ in range(warm_up):
            await side()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        spent = dict.fromkeys(names, 0)
        for _ in range(batch):
            for name in order:
                start = perf_counter_ns()
                await sides[name]()
                spent[name] += perf_counter_ns() - start
        for name in names:
            times[name].append(spent[name] / batch / 1e9)
    return times
