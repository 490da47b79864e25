"""Dispatch in instructions: callgrind counts of each workload of ``dispatch.py``, and its floors.

Run from the repository root (needs ``valgrind``; a few minutes)::

    .venv/bin/python benchmarks/instructions.py              # this tree
    .venv/bin/python benchmarks/instructions.py 92abf95      # this tree and a git revision

Timings on a shared machine drift; instruction counts do not. Each subject of
``dispatch.py`` (hookbus and the floors it is paired with, built by the same code) and the
application events are run ``--n`` times in a loop (the loop ``_timing.time_call`` times,
driven without an event loop: nothing in it suspends) inside ``valgrind --tool=callgrind``,
which counts only while that loop runs (``--toggle-collect`` on the C function that calls
it, ``itertools.starmap``'s). The table gives instructions per dispatch, each hookbus
figure's ratio to its floor, and with ``REF`` this tree's count over ``REF``'s (the tree of
``REF`` is imported beside this one, as ``versus.py`` does).

Instructions are not time (a cache miss or a mispredicted branch is one instruction): the
counts decide between two versions of the hot path; ``dispatch.py`` and ``versus.py`` then
confirm, as timed ratios, what the count says.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Coroutine, Iterator
from itertools import starmap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from benchmarks._timing import Subject  # noqa: E402

WARM = 2_000  # iterations run before counting: entries built, bytecode specialised


def subjects(label: str) -> Iterator[tuple[str, Subject]]:
    """``(case, subject)`` of every workload of ``dispatch.py``, for the hookbus in force."""
    from benchmarks.versus import load_file

    module = load_file(ROOT / "benchmarks" / "dispatch.py", f"_instructions_{label}")
    for w in module.WORKLOADS:
        subject, wrapped, inline = module.hookbus_and_floors(w)
        yield w.name, subject
        yield f"{w.name}/wrapped", wrapped
        if inline is not None:
            yield f"{w.name}/inline", inline
    for pair in asyncio.run(module.app_pairs()):
        if pair.floor.name == "floor":
            yield pair.workload, pair.subject
            yield f"{pair.workload}/wrapped", pair.floor
    yield "/plain call", Subject("plain call", _plain_call, ("event", None))


async def _empty() -> None:
    return None


def _plain_call(event: str, payload: object) -> Coroutine[Any, Any, None]:
    """What any plain ``emit`` costs at least: a call that returns an empty coroutine."""
    return _empty()


def drive(subject: Subject, n: int) -> None:
    """``n`` awaited calls of ``subject``, in a coroutine driven by hand (none suspends)."""

    async def loop() -> None:
        call, args = subject.call, subject.args
        if subject.timer is not None:
            await subject.timer(n)
        elif len(args) == 1:
            (a,) = args
            for _ in range(n):
                await call(a)
        else:
            a, b = args
            for _ in range(n):
                await call(a, b)

    with subject.context():
        coroutine = loop()
        try:
            coroutine.send(None)
        except StopIteration:
            return
    coroutine.close()
    raise RuntimeError(f"{subject.name} suspended: it cannot be counted this way")


def child(tree: str, n: int) -> None:
    """Under callgrind: warm every subject up, then run each once inside ``starmap``."""
    if tree == str(ROOT):
        cases = list(subjects("now"))
    else:
        from benchmarks.versus import tree as imported

        with imported(Path(tree)):
            cases = list(subjects("ref"))
    for _, subject in cases:
        drive(subject, WARM)
    for _, subject in cases:
        list(starmap(drive, [(subject, n)]))  # counted: one dump part per subject
    print(json.dumps([case for case, _ in cases]))


def count(tree: Path, n: int, python: str) -> dict[str, float]:
    """Instructions per call of each case, counted in a child process under callgrind."""
    with tempfile.TemporaryDirectory(prefix="hookbus-callgrind-") as folder:
        out = Path(folder) / "callgrind.out"
        command = [
            "valgrind", "--tool=callgrind", "--collect-atstart=no",
            "--toggle-collect=starmap_next", "--dump-after=starmap_next",
            f"--callgrind-out-file={out}", "--dump-instr=no", "--compress-strings=no",
            python, __file__, "--child", str(tree), "--n", str(n),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        cases = json.loads(done.stdout.strip().splitlines()[-1])
        parts = sorted(Path(folder).glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:]))
        # starmap_next is called twice per case (the second call finds the end): two parts
        totals = [_total(p) for p in parts]
        totals = totals[::2]
    if len(totals) != len(cases):
        raise SystemExit(f"{len(totals)} dump parts for {len(cases)} cases")
    return {case: total / n for case, total in zip(cases, totals, strict=True)}


def _total(part: Path) -> int:
    found = re.search(r"^(?:totals|summary): (\d+)", part.read_text(), re.MULTILINE)
    assert found is not None, part
    return int(found.group(1))


def report(now: dict[str, float], before: dict[str, float] | None, ref: str | None) -> str:
    head = f"{'case':<11} {'hookbus':>8} {'wrapped':>8} {'inline':>8}"
    head += f" {'/wrapped':>9} {'/inline':>8}"
    if before is not None:
        head += f" {ref or 'ref':>9} {'now/ref':>8}"
    lines = [head, "-" * len(head)]
    for case in (c for c in now if "/" not in c):
        hb, wrap, inline = now[case], now[f"{case}/wrapped"], now.get(f"{case}/inline")
        line = f"{case:<11} {hb:>8.0f} {wrap:>8.0f} {'-' if inline is None else f'{inline:.0f}':>8}"
        line += f" {hb / wrap:>9.3f} {'-' if inline is None else f'{hb / inline:.3f}':>8}"
        if before is not None and case in before:
            line += f" {before[case]:>9.0f} {hb / before[case]:>8.3f}"
        lines.append(line)
    plain, floor = now["/plain call"], now["miss/wrapped"]
    lines.append(
        f"\na plain call returning an empty coroutine: {plain:.0f} ({plain / floor:.3f}x the miss"
        " floor), the least a miss can cost"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("ref", nargs="?", help="a git revision to compare with")
    parser.add_argument("--n", type=int, default=5_000, help="dispatches counted per case")
    parser.add_argument("--child", metavar="TREE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n)
        return 0
    if shutil.which("valgrind") is None:
        print("benchmarks/instructions.py: valgrind is not installed; nothing counted")
        return 0
    print(f"instructions per dispatch (callgrind), Python {sys.version.split()[0]}, n = {args.n}")
    now = count(ROOT, args.n, sys.executable)
    before = None
    if args.ref:
        from benchmarks.versus import extract

        with tempfile.TemporaryDirectory(prefix="hookbus-ref-") as folder:
            before = count(extract(args.ref, Path(folder)), args.n, sys.executable)
    print(report(now, before, args.ref))
    return 0


if __name__ == "__main__":
    sys.exit(main())
