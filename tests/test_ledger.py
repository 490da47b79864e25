"""What a scope records between BEGIN and COMMIT, through savepoints: marks, single-last
operations, accumulations. Run on both backends (``_scopes``).

Issue 14's guards: marks ignored inside a savepoint or a nested ``transaction()``; a
``SingleLastOperation`` replaced in a savepoint that rolls back, lost; an accumulation made in
a savepoint that rolls back, still fed afterwards; a second single-last class caught by the
replacement of the first; another factory for an accumulation whose precommit ran.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from _postgres import assert_pool_hands_out_everything
from _recording import LastRecorded, Recorded
from _scopes import SCHEMA, Scopes, open_scopes

import hookbus


@pytest_asyncio.fixture
async def items(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    await pool.execute(SCHEMA)
    yield pool
    await assert_pool_hands_out_everything(pool)


@pytest.fixture(params=["memory", "asyncpg"])
def scopes(request: pytest.FixtureRequest) -> Scopes:
    return open_scopes(request)


class Boom(Exception):
    """What the tests raise to roll a savepoint back."""


# -- marks ----------------------------------------------------------------------------------

MARKS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "added": ("mark_added", hookbus.added_in_transaction),
    "deleted": ("mark_deleted", hookbus.deleted_in_transaction),
}


class Sees(hookbus.Operation):
    """Records, at precommit, whether each of ``eids`` is marked (by ``marked``)."""

    def __init__(self, seen: list[bool], marked: Callable[[Any], bool], *eids: int) -> None:
        super().__init__()
        self.seen, self.marked, self.eids = seen, marked, eids

    async def precommit(self) -> None:
        self.seen.extend(self.marked(eid) for eid in self.eids)


@pytest.mark.parametrize("mark", MARKS)
@pytest.mark.parametrize("opened_by", ["tx.savepoint()", "a nested transaction()"])
async def test_an_entity_marked_inside_a_savepoint_is_marked_there_and_once_released(
    scopes: Scopes, mark: str, opened_by: str
) -> None:
    method, marked = MARKS[mark]
    seen: list[bool] = []
    async with scopes.transaction() as tx:
        await scopes.write(tx, 1)
        savepoint = tx.savepoint() if opened_by == "tx.savepoint()" else scopes.nested(tx)
        async with savepoint:
            getattr(tx, method)(1)
            assert marked(1)
            async with tx.savepoint():  # two deep
                getattr(tx, method)(2)
                assert marked(1) and marked(2)
            assert marked(2)  # released into the outer savepoint
        assert marked(1) and marked(2) and not marked(3)
        assert getattr(tx, mark)(1) and getattr(tx, mark)(2)
        tx.add(Sees(seen, marked, 1, 2, 3))
    assert seen == [True, True, False]
    assert tx.state is hookbus.TransactionState.COMMITTED


@pytest.mark.parametrize("mark", MARKS)
async def test_a_mark_made_before_a_savepoint_survives_its_rollback(
    scopes: Scopes, mark: str
) -> None:
    method, marked = MARKS[mark]
    async with scopes.transaction() as tx:
        getattr(tx, method)(1)
        async with tx.savepoint():
            getattr(tx, method)(2)
            with pytest.raises(Boom):
                async with tx.savepoint():
                    getattr(tx, method)(1)  # marked already: the savepoint changes nothing
                    getattr(tx, method)(2)
                    getattr(tx, method)(3)
                    raise Boom
            assert marked(1) and marked(2) and not marked(3)
        assert marked(1) and marked(2) and not marked(3)
        with pytest.raises(Boom):
            async with scopes.nested(tx):
                getattr(tx, method)(4)
                raise Boom
        assert marked(1) and marked(2) and not marked(4)


# -- single-last operations -------------------------------------------------------------------


class LastX(LastRecorded):
    """A single-last operation."""


class LastY(LastRecorded):
    """Another single-last class."""


async def test_a_single_last_replaced_in_a_rolled_back_savepoint_comes_back(
    scopes: Scopes,
) -> None:
    log: list[str] = []
    async with scopes.transaction() as tx:
        await scopes.write(tx, 1)
        tx.add(LastX(log, "x1"))
        tx.add(LastY(log, "y1"))
        with pytest.raises(Boom):
            async with tx.savepoint():
                tx.add(LastX(log, "x2"))  # replaces x1, pending
                async with tx.savepoint():
                    tx.add(LastY(log, "y2"))  # replaces y1; released into the outer one
                raise Boom
        assert log == ["x2.rollback", "y2.rollback"]
    # Both come back, in the order they were queued, with their callbacks.
    assert log[2:] == ["x1.precommit", "y1.precommit", "x1.postcommit", "y1.postcommit"]


async def test_a_single_last_replaced_in_a_released_savepoint_stays_replaced(
    scopes: Scopes,
) -> None:
    log: list[str] = []
    async with scopes.transaction() as tx:
        await scopes.write(tx, 1)
        tx.add(LastX(log, "x1"))
        async with tx.savepoint():
            tx.add(LastX(log, "x2"))
    assert log == ["x2.precommit", "x2.postcommit"]


@pytest.mark.parametrize("in_savepoint", [False, True])
async def test_replacing_a_single_last_leaves_other_classes_queued(
    scopes: Scopes, in_savepoint: bool
) -> None:
    log: list[str] = []
    async with scopes.transaction() as tx:
        await scopes.write(tx, 1)
        tx.add(LastX(log, "x1"))
        tx.add(LastY(log, "y1"))
        tx.add(Recorded(log, "plain"))
        if in_savepoint:
            async with tx.savepoint():
                tx.add(LastX(log, "x2"))
        else:
            tx.add(LastX(log, "x2"))
    # x2 took x1's turn away, not y1's; the replaced one never runs; the new one runs last.
    assert log == [
        "plain.precommit",
        "y1.precommit",
        "x2.precommit",
        "plain.postcommit",
        "y1.postcommit",
        "x2.postcommit",
    ]


# -- accumulations ----------------------------------------------------------------------------


class Gather(hookbus.Operation):
    """Records its phases with a copy of its values."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        super().__init__()
        self.log = log

    def _record(self, phase: str) -> None:
        values = self.values
        self.log.append((phase, sorted(values) if isinstance(values, set) else list(values)))

    async def precommit(self) -> None:
        self._record("precommit")

    async def rollback(self) -> None:
        self._record("rollback")

    async def postcommit(self) -> None:
        self._record("postcommit")


@pytest.mark.parametrize("container", [set, list])
async def test_an_accumulation_made_in_a_rolled_back_savepoint_starts_afresh(
    scopes: Scopes, container: type
) -> None:
    log: list[tuple[str, Any]] = []
    gather = functools.partial(Gather, log)
    async with scopes.transaction() as tx:
        await scopes.write(tx, 1)
        with pytest.raises(Boom):
            async with tx.savepoint():
                tx.accumulate("k", 1, gather, container=container)
                raise Boom
        assert log == [("rollback", [1])]  # the dropped operation got its rollback
        assert tx.operations == ()
        tx.accumulate("k", 2, gather, container=container)  # a new operation for the key
        tx.accumulate("k", 3, gather, container=container)
        assert len(tx.operations) == 1
    assert log[1:] == [("precommit", [2, 3]), ("postcommit", [2, 3])]


async def test_an_accumulation_made_in_a_rolled_back_nested_savepoint_starts_afresh(
    scopes: Scopes,
) -> None:
    log: list[tuple[str, Any]] = []
    gather = functools.partial(Gather, log)
    async with scopes.transaction() as tx:
        async with tx.savepoint():
            with pytest.raises(Boom):
                async with scopes.nested(tx):
                    tx.accumulate("k", 1, gather)
                    raise Boom
            tx.accumulate("k", 2, gather)
        tx.accumulate("k", 3, gather)
    assert log == [("rollback", [1]), ("precommit", [2, 3]), ("postcommit", [2, 3])]


class Other(hookbus.Operation):
    """Another factory."""


async def test_another_factory_is_refused_for_a_key_whose_operation_ran(scopes: Scopes) -> None:
    log: list[tuple[str, Any]] = []
    refused: list[str] = []

    class Refeeds(Gather):
        async def precommit(self) -> None:
            await super().precommit()
            tx = hookbus.current_transaction()
            if len(log) == 1:  # the first one: its key is closed now
                message = r"key 'k' accumulates into functools.partial\(.*Refeeds.*\), not Other$"
                with pytest.raises(TypeError, match=message) as raised:
                    tx.accumulate("k", 9, Other)
                refused.append(str(raised.value))
                tx.accumulate("k", 2, refeeds)  # the same factory: a new operation

    refeeds = functools.partial(Refeeds, log)
    async with scopes.transaction() as tx:
        await scopes.write(tx, 1)
        tx.accumulate("k", 1, refeeds)
    assert len(refused) == 1
    assert log == [
        ("precommit", [1]),
        ("precommit", [2]),
        ("postcommit", [1]),
        ("postcommit", [2]),
    ]


@dataclasses.dataclass(frozen=True)
class GatherInto:
    """A factory of ``Gather``; two made alike are equal, not the same object."""

    log: list[tuple[str, Any]]

    def __call__(self) -> Gather:
        return Gather(self.log)


async def test_an_equal_factory_feeds_the_same_operation_another_is_refused(
    scopes: Scopes,
) -> None:
    log: list[tuple[str, Any]] = []
    async with scopes.transaction() as tx:
        await scopes.write(tx, 1)
        tx.accumulate("k", 1, GatherInto(log))
        tx.accumulate("k", 2, GatherInto(log))  # equal: the same factory
        message = r"key 'k' accumulates into GatherInto\(.*\), not Other$"
        with pytest.raises(TypeError, match=message):
            tx.accumulate("k", 3, Other)
        assert len(tx.operations) == 1
    assert log == [("precommit", [1, 2]), ("postcommit", [1, 2])]


# -- the precommit queues -----------------------------------------------------------------------


class LateOne(Recorded, hookbus.LateOperation):
    """A late operation that may schedule another late one in its precommit."""

    def __init__(self, log: list[str], name: str, then: str | None = None) -> None:
        super().__init__(log, name)
        self.then = then

    async def precommit(self) -> None:
        await super().precommit()
        if self.then is not None:
            hookbus.current_transaction().add(LateOne(self.log, self.then))


async def test_late_operations_each_run_once_in_order(scopes: Scopes) -> None:
    log: list[str] = []
    async with scopes.transaction() as tx:
        await scopes.write(tx, 1)
        tx.add(LateOne(log, "late-1"))
        tx.add(LateOne(log, "late-2", then="late-4"))
        tx.add(LateOne(log, "late-3"))
        tx.add(Recorded(log, "plain"))
    pre = [entry.removesuffix(".precommit") for entry in log if entry.endswith(".precommit")]
    post = [entry.removesuffix(".postcommit") for entry in log if entry.endswith(".postcommit")]
    assert pre == ["plain", "late-1", "late-2", "late-3", "late-4"]
    assert post == pre


async def test_operations_scheduled_after_a_dropped_accumulation_all_run(
    scopes: Scopes,
) -> None:
    # The dropped operation's memory is reused by the next ones of its class (the same id()
    # in CPython): none of them may be taken for it.
    log: list[tuple[str, Any]] = []
    others: list[tuple[str, Any]] = []
    async with scopes.transaction() as tx:
        await scopes.write(tx, 1)
        with pytest.raises(Boom):
            async with tx.savepoint():
                tx.accumulate("dropped", 1, functools.partial(Gather, log))
                raise Boom
        for _ in range(200):
            op = Gather(others)
            op.values = []
            tx.add(op)
        tx.accumulate("kept", 2, functools.partial(Gather, log))
    assert others == [("precommit", [])] * 200 + [("postcommit", [])] * 200
    assert log == [("rollback", [1]), ("precommit", [2]), ("postcommit", [2])]


class SortedList(list[Any]):
    """A list-like container whose append keeps its values sorted (not at the end)."""

    def append(self, value: Any) -> None:
        index = len(self)
        while index and self[index - 1] > value:
            index -= 1
        self.insert(index, value)


@pytest.mark.parametrize("container", [list, SortedList])
async def test_list_values_appended_in_a_rolled_back_savepoint_are_taken_out_one_each(
    scopes: Scopes, container: type
) -> None:
    # Repeated values, some before the savepoint: each undone value takes out one occurrence
    # (the last one), even when the container did not append it at the end.
    log: list[tuple[str, Any]] = []
    gather = functools.partial(Gather, log)
    async with scopes.transaction() as tx:
        await scopes.write(tx, 1)
        tx.accumulate("k", 5, gather, container=container)
        tx.accumulate("k", 1, gather, container=container)
        with pytest.raises(Boom):
            async with tx.savepoint():
                tx.accumulate("k", 3, gather, container=container)
                tx.accumulate("k", 1, gather, container=container)
                tx.accumulate("k", 5, gather, container=container)
                raise Boom
        tx.accumulate("k", 2, gather, container=container)
    kept = [1, 2, 5] if container is SortedList else [5, 1, 2]
    assert log == [("precommit", kept), ("postcommit", kept)]


async def test_a_list_accumulation_opened_empty_is_empty_again_after_a_rolled_back_savepoint(
    scopes: Scopes,
) -> None:
    log: list[tuple[str, Any]] = []
    gather = functools.partial(Gather, log)
    async with scopes.transaction() as tx:
        await scopes.write(tx, 1)
        tx.accumulate_many("k", [], gather, container=list)  # scheduled, no value yet
        with pytest.raises(Boom):
            async with tx.savepoint():
                tx.accumulate("k", "a", gather, container=list)
                raise Boom
    assert log == [("precommit", []), ("postcommit", [])]


async def test_an_equal_factory_feeds_the_same_operation_inside_a_savepoint(
    scopes: Scopes,
) -> None:
    log: list[tuple[str, Any]] = []
    async with scopes.transaction() as tx:
        await scopes.write(tx, 1)
        async with tx.savepoint():
            tx.accumulate("k", 1, GatherInto(log))
            tx.accumulate("k", 2, GatherInto(log))  # equal: the same factory
            message = r"^key 'k' accumulates into GatherInto\(.*\), not Other$"
            with pytest.raises(TypeError, match=message):
                tx.accumulate("k", 3, Other)
        assert len(tx.operations) == 1
    assert log == [("precommit", [1, 2]), ("postcommit", [1, 2])]


async def test_a_container_without_add_or_append_is_refused_by_its_type_name(
    scopes: Scopes,
) -> None:
    async with scopes.transaction() as tx:
        await scopes.write(tx, 1)
        message = r"^accumulate\(\) needs a container with add\(\) or append\(\), not tuple$"
        with pytest.raises(TypeError, match=message):
            tx.accumulate("k", 1, Other, container=tuple)
        assert tx.operations == ()


class LateGather(Gather, hookbus.LateOperation):
    """A late accumulating operation that feeds its own key once, in its precommit."""

    async def precommit(self) -> None:
        await super().precommit()
        if len(self.log) == 1:  # the first one: its key is closed now
            hookbus.current_transaction().accumulate("k", 2, LateGatherInto(self.log))


@dataclasses.dataclass(frozen=True)
class LateGatherInto:
    """A factory of ``LateGather``; two made alike are equal."""

    log: list[tuple[str, Any]]

    def __call__(self) -> LateGather:
        return LateGather(self.log)


async def test_a_late_accumulation_stops_accumulating_once_its_precommit_starts(
    scopes: Scopes,
) -> None:
    log: list[tuple[str, Any]] = []
    async with scopes.transaction() as tx:
        await scopes.write(tx, 1)
        tx.accumulate("k", 1, LateGatherInto(log))
    assert log == [
        ("precommit", [1]),
        ("precommit", [2]),
        ("postcommit", [1]),
        ("postcommit", [2]),
    ]
