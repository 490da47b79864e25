"""What ``with hooks_control(...) as state`` gives (issue 14, item 10)."""

from __future__ import annotations

import pytest

import hookbus
from hookbus import ALLOW_ALL, DENY_ALL, hooks_control


@pytest.mark.parametrize("mode", [ALLOW_ALL, DENY_ALL])
def test_the_block_gives_the_state_in_force(mode: hookbus.ControlMode) -> None:
    with hooks_control(mode, "integrity", "metadata") as state:
        assert isinstance(state, hookbus.Control)
        assert state is hookbus.current_control()
        assert state.mode is mode
        assert state.categories == {"integrity", "metadata"}
        with hooks_control(DENY_ALL) as inner:
            assert inner is hookbus.current_control()
            assert inner.mode is DENY_ALL and inner.categories == frozenset()
        assert hookbus.current_control() is state
    assert hookbus.current_control() is None


def test_the_state_reads_as_the_block_that_makes_it() -> None:
    with hooks_control(DENY_ALL, "metadata", "integrity") as state:
        assert repr(state) == "hooks_control(DENY_ALL, integrity, metadata)"
    assert repr(hookbus.Control(ALLOW_ALL, frozenset())) == "hooks_control(ALLOW_ALL, )"


def test_a_block_is_entered_once_at_a_time_and_again_after_its_exit() -> None:
    block = hooks_control(DENY_ALL, "integrity")
    with block as state:
        with pytest.raises(RuntimeError, match="already entered"), block:
            pass
        assert hookbus.current_control() is state  # the refused entry changed nothing
    assert hookbus.current_control() is None
    with block as again:  # left, it may be entered again
        assert again is state is hookbus.current_control()
    assert hookbus.current_control() is None
