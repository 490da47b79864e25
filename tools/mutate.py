"""Mutation testing of one module: ``./run mutate hookbus/_ledger.py [TEST ...]``.

mutmut 3 does the work: it makes operator, comparison, boolean, return-value, constant and
deleted-call mutants of every function of the module, finds which of the selected tests run
each function, and runs only those against each mutant (in forked processes, so a mutant
costs its tests, not an interpreter start). This script gives it what this repository needs:

- a scratch copy of the working tree (tracked and untracked files, uncommitted edits
  included) outside the repository, so that nothing here is touched and two runs of
  different modules never share state; its folder is printed for ``mutmut show`` and
  ``mutmut browse`` there;
- the configuration (a ``setup.cfg`` in the copy): the packages (the adapters' moved to the
  top of the copy, where mutmut's module names and the tests' imports agree), ``only_mutate``
  the module, the tests that guard it (the defaults below, or the ones given), the folders
  the tests read (docs, examples);
- a summary: the counts, the score, and each survivor with its diff.

The ``logger.`` calls are left alone unless ``--with-logging``: their wording is not what the
tests guard, and their string mutants bury the survivors that matter.

Score: (killed + timed out) / all mutants run (``--only PATTERN`` runs those whose names
match, e.g. the mutants of the functions a change touched). A timeout is a mutant that made
its tests hang (an endless loop), which no user would miss (its bound: the tests' estimated
time plus ``--timeout-constant``, times 15; mutmut's estimate counts the tests' call phase
only, not their fixtures, so the constant is sized for a loaded machine, lest a mutant whose
tests merely run long pass for caught); "no tests" (no selected test runs the function)
counts against the score. A survivor is not always a missing test: some mutants change
nothing a user can observe (an error message's wording, a value only tested for truth); the
summary lists them all for a reader to judge.

Not part of CI: a run takes minutes (``_ledger.py``, 300 mutants: about 4 minutes on two
shared cores).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The tests that guard each part, by module. A module not listed gets the whole suite.
_SCOPE = [
    "tests/test_ledger.py",
    "tests/test_savepoints.py",
    "tests/test_scope_states.py",
    "tests/test_lifecycle.py",
    "tests/test_transaction_memory.py",
    "tests/test_transaction_asyncpg.py",
    "tests/test_backend_protocol.py",
    "tests/test_scope_under_load.py",
    "tests/test_instrumentation.py",  # the scope observer's calls (Transaction._move)
]
_ASYNCPG_SCOPE = [
    *_SCOPE,
    "tests/test_outcome_finder.py",
    "tests/test_outcome.py",
    "tests/test_asyncpg_faults.py",
    "tests/test_asyncpg_lazy.py",  # tx.connection before the first statement (_lazy.py)
    "tests/test_outbox_commit.py",  # statements sent with COMMIT (send_with_commit)
    # Random timeouts sized for full speed: under mutmut's slower trampolines none lands
    # where the test needs some to.
    "--deselect",
    "tests/test_asyncpg_faults.py::test_cancelled_during_begin_leaves_no_transaction_open",
]
# Test mode (the pytest plugin's ``hookbus_db``): its scopes run on savepoints of the test's
# transaction, a path of the scope (the stand-in) only these sub-sessions take.
_TEST_MODE_SCOPE = [*_ASYNCPG_SCOPE, "tests/test_pytest_plugin.py"]
_DISPATCH = [
    "tests/test_bus.py",
    "tests/test_control.py",
    "tests/test_hooks_control.py",
    "tests/test_selectors.py",
    "tests/test_explain.py",
    "tests/test_instrumentation.py",  # entries built through hookbus.instrumentation
]
# Where the warning points (its stacklevel: the emit) moves when the frames between are
# mutmut's trampolines, which wrap each function of the module mutated.
_DISPATCH_WARNED = [
    *_DISPATCH,
    "--deselect",
    "tests/test_control.py::test_the_warning_points_at_the_emit",
]
GUARDS: dict[str, list[str]] = {
    "hookbus/_ledger.py": _SCOPE,
    "hookbus/_savepoints.py": _SCOPE,
    "hookbus/_transaction.py": _SCOPE,
    "hookbus/_shield.py": _SCOPE,
    "hookbus/_operations.py": _SCOPE,
    "hookbus/_backend.py": _SCOPE,
    "adapters/hookbus_asyncpg/_transaction/_transaction.py": _TEST_MODE_SCOPE,
    "adapters/hookbus_asyncpg/_transaction/_backend.py": _ASYNCPG_SCOPE,
    "adapters/hookbus_asyncpg/_transaction/_outcome.py": _ASYNCPG_SCOPE,
    "adapters/hookbus_asyncpg/_transaction/_lazy.py": _ASYNCPG_SCOPE,
    "adapters/hookbus_asyncpg/_transaction/_savepoint_backend.py": _TEST_MODE_SCOPE,
    "adapters/hookbus_asyncpg/_transaction/_rollback_mode.py": _TEST_MODE_SCOPE,
    "hookbus/_control.py": _DISPATCH,
    "hookbus/_index.py": _DISPATCH_WARNED,
    "hookbus/_selectors.py": _DISPATCH,
    "hookbus/_dispatch.py": _DISPATCH,
    "hookbus/_generate.py": _DISPATCH,
    "hookbus/_bus.py": _DISPATCH_WARNED,
}
# Modules whose runs start each test with _generate.py's compiled shapes forgotten. That
# cache outlives a test: mutmut runs the suite once in its main process, recording which
# tests run which function, and forks each mutant's tests from there; with the shapes kept,
# only the first test of each shape is seen to run the code that compiles it, and in the
# forks no test runs it at all, so its mutants survive unseen.
FRESH = {"hookbus/_control.py", "hookbus/_selectors.py", "hookbus/_dispatch.py",
         "hookbus/_generate.py", "hookbus/_index.py", "hookbus/_bus.py"}  # fmt: skip
FRESH_PLUGIN = """\
\"\"\"Written by tools/mutate.py in its scratch copy: each test compiles its own shapes.\"\"\"
import pytest


@pytest.fixture(autouse=True)
def _forget_compiled_shapes():
    from hookbus import _generate

    _generate._compiled.clear()
"""
# What the tests read besides the code and the tests themselves.
ALSO_COPY = ["docs", "examples", "benchmarks", "README.md"]
# Lines left alone unless --with-logging: a log call's wording is not what the tests guard,
# and its string mutants would bury the survivors that matter.
LOGGING = r"^\s*logger\.(debug|info|warning|error|exception)\("


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="./run mutate",
        description="Mutation-test one module with mutmut and print its score and survivors.",
    )
    parser.add_argument("module", help="the module to mutate, e.g. hookbus/_ledger.py")
    parser.add_argument(
        "tests", nargs="*", help="the test files to run (default: those that guard the module)"
    )
    parser.add_argument("--max-children", type=int, help="mutants run at once (mutmut's)")
    parser.add_argument(
        "--with-logging",
        action="store_true",
        help="mutate the logger calls too (left alone by default: their wording is not tested)",
    )
    parser.add_argument(
        "--memory",
        type=int,
        default=1024,
        metavar="MB",
        help="the heap each test process may take (default 1024): a mutant that loops "
        "appending fails with MemoryError at once instead of filling the machine's memory",
    )
    parser.add_argument(
        "--timeout-constant",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds added to a mutant's estimated test time before mutmut's timeout "
        "multiplier (15) applies (default 10; mutmut's own 1): mutmut times the tests' "
        "call phase only, while their fixtures (pools, tables) take most of the time; with "
        "1, a mutant whose tests merely run long on a loaded machine counts as timed out",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="PATTERN",
        help="run only the mutants whose names match (fnmatch, as `mutmut results` names "
        "them, e.g. '*ǁconnect__mutmut_*'; repeatable): a rerun of what changed",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="the scratch copy (default: <tmp>/hookbus-mutate/<module>); replaced if present",
    )
    args = parser.parse_args(argv)
    module = Path(args.module).as_posix()
    if not module.endswith(".py") or not (ROOT / module).is_file():
        parser.error(f"no module {module!r} in {ROOT}")
    if not module.startswith(("hookbus/", "adapters/")):
        parser.error("the module must be under hookbus/ or adapters/")
    tests = args.tests or GUARDS.get(module, ["tests"])
    slug = module.removesuffix(".py").replace("/", ".")
    workdir = args.workdir or Path(tempfile.gettempdir()) / "hookbus-mutate" / slug
    copy_tree(workdir)
    packages = lift_adapters(workdir)
    (workdir / "setup.cfg").write_text(
        config(
            module.removeprefix("adapters/"),
            packages,
            tests,
            args.with_logging,
            args.timeout_constant,
            module in FRESH,
        )
    )
    if module in FRESH:
        (workdir / "_mutate_fresh.py").write_text(FRESH_PLUGIN)
    print(f"mutate: {module} against {' '.join(tests)}\nmutate: scratch copy {workdir}")
    log = workdir / "mutmut.log"
    command = [sys.executable, "-m", "mutmut", "run"]
    if args.max_children:
        command += ["--max-children", str(args.max_children)]
    command += args.only or []
    with log.open("w") as out:
        run = subprocess.run(
            command,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=functools.partial(limit_heap, args.memory * 2**20),
        )
    if run.returncode != 0:
        print(log.read_text()[-4000:], file=sys.stderr)
        print(f"mutate: mutmut failed (exit {run.returncode}); its log: {log}", file=sys.stderr)
        return 1
    return summarize(workdir)


def limit_heap(size: int) -> None:
    """Limit the heap of this process and its children (mutmut forks one per mutant)."""
    resource.setrlimit(resource.RLIMIT_DATA, (size, size))


def copy_tree(workdir: Path) -> None:
    """Copy the working tree's files (as git sees them, ignored ones left out) to ``workdir``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    if workdir.exists():
        shutil.rmtree(workdir)
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # (a file deleted but not yet staged is listed too)
            target = workdir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def lift_adapters(workdir: Path) -> list[str]:
    """Move the adapters' packages to the top of the copy; return every package's folder.

    mutmut names a module after its path (``adapters.hookbus_asyncpg._transaction._outcome``)
    where the tests import ``hookbus_asyncpg._transaction._outcome`` (pytest's ``pythonpath``
    has ``adapters``): at the top, the two agree, and ``.``, first on that path, finds them there.
    """
    packages = ["hookbus"]
    for package in sorted((workdir / "adapters").iterdir()):
        if (package / "__init__.py").is_file():
            package.rename(workdir / package.name)
            packages.append(package.name)
    return packages


def config(
    module: str,
    packages: list[str],
    tests: list[str],
    with_logging: bool,
    timeout_constant: float,
    fresh: bool = False,
) -> str:
    def values(items: list[str]) -> str:
        return "".join(f"\n    {item}" for item in items)

    return (
        "[mutmut]\n"
        f"source_paths ={values(packages)}\n"
        f"only_mutate ={values([module])}\n"
        f"pytest_add_cli_args_test_selection ={values(tests)}\n"
        f"also_copy ={values(ALSO_COPY + (['_mutate_fresh.py'] if fresh else []))}\n"
        f"timeout_constant = {timeout_constant}\n"
        + ("" if with_logging else f"do_not_mutate_patterns ={values([LOGGING])}\n")
        + (f"pytest_add_cli_args ={values(['-p', '_mutate_fresh'])}\n" if fresh else "")
    )


def mutmut(workdir: Path, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "mutmut", *args],
        cwd=workdir,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def summarize(workdir: Path) -> int:
    mutmut(workdir, "export-cicd-stats")
    stats = json.loads((workdir / "mutants" / "mutmut-cicd-stats.json").read_text())
    # Mutants left unrun (--only, or a run stopped) are out of the score; "no tests" ones
    # count against it.
    outcomes = ("killed", "timeout", "survived", "no_tests", "suspicious", "segfault")
    total = sum(stats[key] for key in outcomes)
    caught = stats["killed"] + stats["timeout"]
    counts = ", ".join(f"{key} {value}" for key, value in stats.items() if value)
    score = caught / total if total else 1.0
    print(f"mutate: {counts}")
    unrun = stats["total"] - total - stats["skipped"]
    print(
        f"mutate: score {score:.1%} ({caught} of {total} caught: killed or timed out"
        + (f"; {unrun} not run)" if unrun else ")")
    )
    missed = [
        line.strip().rsplit(": ", 1)[0]
        for line in mutmut(workdir, "results").splitlines()
        if line.strip().endswith((": survived", ": no tests", ": suspicious"))
    ]
    for name in missed:
        diff = mutmut(workdir, "show", name)
        changed = [line for line in diff.splitlines() if line[:2] in ("- ", "+ ")]
        print(f"\n{name}\n" + "\n".join(f"    {line}" for line in changed))
    if missed:
        print(f"\nmutate: in {workdir}: {sys.executable} -m mutmut show NAME (or browse)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    raise SystemExit(main())
