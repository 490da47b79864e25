"""The finder of a lost COMMIT's outcome, behind its small ``status_of`` callable."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from hookbus import (
    CommitOutcome,
    CommitOutcomeUnknownError,
    TransactionAbortedError,
    find_commit_outcome,
)

LOST = ConnectionError("lost during COMMIT")


class Answers:
    """A ``status_of`` that gives ``answers`` in turn (raising those that are errors)."""

    def __init__(self, *answers: str | BaseException | None) -> None:
        self._answers: Iterator[str | BaseException | None] = iter(answers)
        self.asked = 0

    async def __call__(self, xid: str) -> str | None:
        assert xid == "742"
        self.asked += 1
        answer = next(self._answers, "in progress")
        if isinstance(answer, BaseException):
            raise answer
        return answer


async def test_asks_until_the_answer_is_final_then_stops() -> None:
    answers = Answers("in progress", "in progress", "committed", "aborted")
    assert await find_commit_outcome("742", answers, lost=LOST, within=5) is (
        CommitOutcome.COMMITTED
    )
    assert answers.asked == 3  # not polled on once answered


async def test_rolled_back_is_an_aborted_transaction() -> None:
    with pytest.raises(TransactionAbortedError, match="rolled transaction 742") as raised:
        await find_commit_outcome("742", Answers("aborted"), lost=LOST, within=5)
    assert raised.value.__cause__ is LOST


async def test_asks_again_when_the_connection_asked_on_is_lost_too() -> None:
    answers = Answers(OSError("gone too"), OSError("gone too"), "committed")
    outcome = await find_commit_outcome(
        "742", answers, lost=LOST, within=5, lost_too=lambda e: isinstance(e, OSError)
    )
    assert outcome is CommitOutcome.COMMITTED and answers.asked == 3


async def test_another_error_ends_the_asking_as_unknown() -> None:
    answers = Answers(ValueError("bad"), "committed")
    with pytest.raises(CommitOutcomeUnknownError, match="could not be asked"):
        await find_commit_outcome("742", answers, lost=LOST, within=5)
    assert answers.asked == 1


async def test_still_in_progress_at_the_deadline_is_unknown() -> None:
    with anyio.fail_after(3):  # within=0.1 bounds it
        with pytest.raises(CommitOutcomeUnknownError, match="in progress"):
            await find_commit_outcome("742", Answers(), lost=LOST, within=0.1)


async def test_a_cancellation_does_not_cut_the_asking_short() -> None:
    # The finder runs inside COMMIT, which no cancellation interrupts.
    answers = Answers("in progress", "committed")
    with anyio.CancelScope() as scope:
        scope.cancel()
        outcome = await find_commit_outcome("742", answers, lost=LOST, within=5)
    assert outcome is CommitOutcome.COMMITTED
