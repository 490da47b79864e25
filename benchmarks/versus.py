"""Before and after, in one process: this tree's hookbus against an earlier commit's, paired.

Run from the repository root::

    .venv/bin/python benchmarks/versus.py                     # against 92abf95
    .venv/bin/python benchmarks/versus.py REF --part dispatch --rounds 21

``REF`` is any git revision (a tag, a commit); by default ``92abf95``, the commit before the
work on the scope under load (lazy begin, the connection back before postcommit, the id from
the first write, no task per COMMIT). Its tree is extracted with ``git archive`` to a
temporary folder, and both trees' ``hookbus`` and ``hookbus_asyncpg`` are imported side by side
into this process (each under its own entries of ``sys.modules``, swapped in while it is
imported). Each case is then built once per tree, from the *same* workload code (this tree's
``benchmarks/dispatch.py`` for dispatch, the cases below for transactions), and the two are
timed as a pair (``_timing.run_pairs``: interleaved rounds, order flipped every round).

The figure is the median of the paired ratios *this tree / REF*: 1.00 is no change, 1.03 is
3% slower. Because both sides run in the same process, round and warm state, the machine's
drift (up to 1.6x within seconds here) cancels, which separate runs of each tree cannot
promise: use this to hold a change to "within 3% of before". Each tree's own ratio to its
floor is what ``dispatch.py`` and ``transaction.py`` report; this compares trees only.

The transaction cases are those of ``transaction.py`` (BEGIN, three INSERTs, N no-op
operations, COMMIT on a pooled connection), in a database of their own (``HOOKBUS_DSN``'s
rule, dropped after). REF must have the same dependencies installed as this tree.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from benchmarks._timing import Pair, Subject, run_pairs  # noqa: E402

PACKAGES = frozenset({"hookbus", "hookbus_asyncpg", "hookbus_asgi", "hookbus_otel"})
INSERT = "INSERT INTO hookbus_versus VALUES ($1)"


def extract(ref: str, into: Path) -> Path:
    """Write the tree of ``ref`` into ``into`` (``git archive``); return it."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


@contextmanager
def tree(root: Path) -> Iterator[dict[str, ModuleType]]:
    """Import hookbus and its asyncpg adapter from ``root``; yield them by name.

    Any hookbus module already imported is put aside first, so that the imports inside the
    block (the workload code's included) bind to ``root``'s; what ``root`` imported is taken
    out of ``sys.modules`` again on leaving (the objects built meanwhile keep their modules).
    """
    aside = {name: sys.modules.pop(name) for name in _ours()}
    sys.path[:0] = [str(root), str(root / "adapters")]
    try:
        modules = {name: importlib.import_module(name) for name in ("hookbus", "hookbus_asyncpg")}
        yield modules
    finally:
        del sys.path[:2]
        for name in _ours():
            del sys.modules[name]
        sys.modules.update(aside)


def _ours() -> list[str]:
    return [name for name in sys.modules if name.partition(".")[0] in PACKAGES]


def load_file(path: Path, name: str) -> ModuleType:
    """Execute the module at ``path`` afresh, under ``name``, against the hookbus in force."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# -- the cases ---------------------------------------------------------------------------------


def dispatch_subjects(label: str) -> dict[str, Subject]:
    """The hookbus subject of each workload of ``dispatch.py``, for the tree in force."""
    module = load_file(ROOT / "benchmarks" / "dispatch.py", f"_versus_dispatch_{label}")
    return {w.name: module.hookbus_and_floor(w)[0] for w in module.WORKLOADS}


BEFORE = "92abf95"  # the commit before the scope's work under load
TRANSACTION_CASES = (
    ("one INSERT, N = 0", 0, True, 1),
    ("N = 0", 0, True, 3),
    ("N = 10", 10, True, 3),
    ("N = 1000", 1000, True, 3),
    ("N = 0, no find", 0, False, 3),
    ("N = 10, no find", 10, False, 3),
)


def transaction_subjects(modules: dict[str, ModuleType], pool: Any) -> dict[str, Subject]:
    """``transaction.py``'s cases, built on the tree in force."""
    hookbus, adapter = modules["hookbus"], modules["hookbus_asyncpg"]

    class Noop(hookbus.Operation):  # type: ignore[misc,name-defined]
        async def precommit(self) -> None:
            pass

        async def postcommit(self) -> None:
            pass

    def case(find: bool, inserts: int) -> Callable[[Any, int], Awaitable[None]]:
        async def run(pool: Any, n: int) -> None:
            async with adapter.transaction(pool, find_outcome=find) as tx:
                conn = tx.connection
                for i in range(inserts):
                    await conn.execute(INSERT, i)
                for _ in range(n):
                    tx.add(Noop())

        return run

    return {
        label: Subject(label, case(find, inserts), (pool, n))
        for label, n, find, inserts in TRANSACTION_CASES
    }


def memory_subjects(modules: dict[str, ModuleType]) -> dict[str, Subject]:
    """The scope alone, on the in-memory backend: N no-op operations, no I/O."""
    hookbus = modules["hookbus"]

    class Noop(hookbus.Operation):  # type: ignore[misc,name-defined]
        async def precommit(self) -> None:
            pass

        async def postcommit(self) -> None:
            pass

    async def run(n: int) -> None:
        async with hookbus.transaction() as tx:
            for _ in range(n):
                tx.add(Noop())

    return {f"memory, N = {n}": Subject(f"memory {n}", run, (n,)) for n in (0, 10, 1000)}


# -- the run -----------------------------------------------------------------------------------


async def compare(pairs: list[Pair], rounds: int, sample_ms: float, title: str, ref: str) -> None:
    await run_pairs(pairs, rounds, sample_ms * 1e6)
    print(f"\n{title}: this tree / {ref}, median of {rounds} paired rounds")
    print(f"{'case':<20} {'ratio':>7} {'quartiles':>13} {'now µs':>9} {'before µs':>10}")
    for pair in pairs:
        q1, q3 = pair.spread
        now = sorted(pair.subject_ns)[len(pair.subject_ns) // 2] / 1e3
        before = sorted(pair.floor_ns)[len(pair.floor_ns) // 2] / 1e3
        print(
            f"{pair.workload:<20} {pair.ratio:>7.3f} {f'{q1:.3f}-{q3:.3f}':>13} "
            f"{now:>9.3f} {before:>10.3f}"
        )


async def run_transactions(
    dsn: str, before: Path, rounds: int, ref: str
) -> None:  # pragma: no cover - a benchmark
    import asyncpg

    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        await pool.execute("CREATE TABLE hookbus_versus (i int)")
        sides = {}
        for label, root in (("now", ROOT), ("before", before)):
            with tree(root) as modules:
                sides[label] = transaction_subjects(modules, pool)
        pairs = [Pair(name, sides["now"][name], sides["before"][name]) for name in sides["now"]]
        await compare(pairs, rounds, 100.0, "transaction", ref)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "ref",
        nargs="?",
        default=BEFORE,
        help=f"the git revision to compare against (a tag, a commit; default {BEFORE})",
    )
    parser.add_argument("--part", choices=("dispatch", "memory", "transaction"), action="append")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--dsn", help="the PostgreSQL server (default: HOOKBUS_DSN's rule)")
    args = parser.parse_args()
    parts = args.part or ["dispatch", "memory", "transaction"]
    with tempfile.TemporaryDirectory(prefix="hookbus-versus-") as folder:
        before = extract(args.ref, Path(folder))
        if "dispatch" in parts:
            sides = {}
            for label, root in (("now", ROOT), ("before", before)):
                with tree(root):
                    sides[label] = dispatch_subjects(label)
            pairs = [Pair(name, sides["now"][name], sides["before"][name]) for name in sides["now"]]
            asyncio.run(compare(pairs, args.rounds, 5.0, "dispatch", args.ref))
        if "memory" in parts:
            sides = {}
            for label, root in (("now", ROOT), ("before", before)):
                with tree(root) as modules:
                    sides[label] = memory_subjects(modules)
            pairs = [Pair(name, sides["now"][name], sides["before"][name]) for name in sides["now"]]
            asyncio.run(compare(pairs, args.rounds, 5.0, "memory scope", args.ref))
        if "transaction" in parts:
            from hookbus_asyncpg.testing import run_with_database

            run_with_database(
                lambda dsn: run_transactions(dsn, before, args.rounds, args.ref),
                "bench_versus",
                dsn=args.dsn,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
