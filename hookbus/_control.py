"""``hooks_control``: which hook categories run, held in a context variable.

The innermost ``with hooks_control(...)`` block decides for its duration; the enclosing
state comes back on exit. Tasks started inside a block inherit its state (a copy of the
context); a block in one task never changes what another task sees.
"""

from __future__ import annotations

import enum
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Final, final

from ._exceptions import RegistrationError

__all__ = ["ALLOW_ALL", "DENY_ALL", "Control", "ControlMode", "current_control", "hooks_control"]


class ControlMode(enum.Enum):
    """Whether the named categories are the exceptions to "all on" or to "all off"."""

    ALLOW_ALL = "allow_all"
    DENY_ALL = "deny_all"


ALLOW_ALL: Final = ControlMode.ALLOW_ALL
DENY_ALL: Final = ControlMode.DENY_ALL

# Interned states kept at most: past it the oldest is forgotten (a state still in use keeps
# working; an equal state made later is then another object, mapped by each bus to the same
# tables), so that ever new states cannot grow memory without end.
_MAX_INTERNED: Final = 1024


@final
class Control:
    """An interned, immutable category state: equal states are the same object.

    Being interned, it serves as part of the dispatch cache key at the cost of an identity
    hash. The table of interned states is bounded (the oldest is forgotten first).
    """

    __slots__ = ("categories", "mode")
    _interned: dict[tuple[ControlMode, frozenset[str]], Control] = {}  # noqa: RUF012

    mode: ControlMode
    categories: frozenset[str]

    def __new__(cls, mode: ControlMode, categories: frozenset[str]) -> Control:
        state = cls._interned.get((mode, categories))
        if state is None:
            state = object.__new__(cls)
            state.mode, state.categories = mode, categories
            if len(cls._interned) >= _MAX_INTERNED:
                del cls._interned[next(iter(cls._interned))]
            cls._interned[mode, categories] = state
        return state

    def enabled(self, category: str, protected: frozenset[str]) -> bool:
        """Whether a hook of ``category`` runs under this state on a bus with ``protected``."""
        if category in protected:
            return True
        return (category in self.categories) is (self.mode is DENY_ALL)

    def __repr__(self) -> str:
        return f"hooks_control({self.mode.name}, {', '.join(sorted(self.categories))})"


_CONTROL: Final[ContextVar[Control | None]] = ContextVar("hookbus_control", default=None)


#: The category state in force here, or ``None`` when every category is enabled.
current_control: Final = _CONTROL.get


@final
class hooks_control:  # a context manager, named as CubicWeb names it
    """Run a block with only some hook categories enabled.

    ``hooks_control(ALLOW_ALL, "integrity")`` enables every category but ``integrity``;
    ``hooks_control(DENY_ALL, "integrity")`` enables none but ``integrity``. The state
    lives in the context, not on a bus: it applies to every bus that dispatches inside the
    block, and each bus reads it with its own hooks and its own protected categories, which
    stay enabled under either mode. A name that does nothing on the bus dispatching (no hook
    there has that category, or it is protected there and named in ``ALLOW_ALL``) is
    reported once per name with an ``UnknownCategoryWarning``, naming the closest categories.

    ``with hooks_control(...) as state`` gives the :class:`Control` the block puts in force
    (the same object ``current_control()`` returns inside it): its ``mode``, its
    ``categories``, and ``state.enabled(category, protected)``, which tells whether hooks of
    a category run under it on a bus protecting ``protected``. Equal states are one object.

    >>> with hooks_control(DENY_ALL, "integrity") as state:
    ...     state.enabled("integrity", frozenset()), state.enabled("metadata", frozenset())
    (True, False)
    """

    __slots__ = ("_state", "_token")

    def __init__(self, mode: ControlMode, *categories: str) -> None:
        if not isinstance(mode, ControlMode):
            raise RegistrationError(f"hooks_control() takes ALLOW_ALL or DENY_ALL, not {mode!r}")
        for category in categories:
            if not isinstance(category, str) or not category:
                raise RegistrationError(f"a category is a non-empty string, not {category!r}")
        self._state = Control(mode, frozenset(categories))
        self._token: Token[Control | None] | None = None

    def __enter__(self) -> Control:
        if self._token is not None:
            raise RuntimeError("this hooks_control block is already entered")
        self._token = _CONTROL.set(self._state)
        return self._state

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._token is not None
        _CONTROL.reset(self._token)
        self._token = None
