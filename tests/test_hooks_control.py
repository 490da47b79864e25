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
