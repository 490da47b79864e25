"""What a registered hook is: its record, and the base class of class-based hooks."""

from __future__ import annotations

import dis
import functools
import inspect
import types
from collections.abc import Callable
from typing import Any, ClassVar, Final, final

import msgspec

from ._exceptions import RegistrationError
from ._selectors import Selector

__all__ = ["Hook", "HookInfo", "describe", "hook_name", "returns_none"]

#: The category of a hook registered without one.
DEFAULT_CATEGORY = "default"


@final
class HookInfo(msgspec.Struct, frozen=True):
    """A registered hook, as ``bus.hooks_for()`` and the CLI listing show it.

    Hooks run by ``priority`` (lower first), then by registration ``order``. ``returns_none``
    is true for a plain function whose every ``return`` returns ``None`` (read from its code
    at registration): dispatch then skips checking that it returned no coroutine.
    """

    name: str
    fn: Callable[[Any], Any]
    events: tuple[str, ...]
    select: Selector | None
    category: str
    priority: int
    order: int
    is_async: bool
    returns_none: bool = False


class Hook:
    """Base class of class-based hooks (CubicWeb style).

    >>> class PersonAge(Hook):
    ...     events = ("before_add_entity",)
    ...     category = "integrity"
    ...     async def __call__(self, event): ...

    ``bus.register(PersonAge)`` instantiates the class once, with no arguments, and calls
    the instance for each matching dispatch.
    """

    events: ClassVar[tuple[str, ...]] = ()
    select: ClassVar[Selector | None] = None
    category: ClassVar[str] = DEFAULT_CATEGORY
    priority: ClassVar[int] = 0

    def __call__(self, event: Any) -> Any:
        raise NotImplementedError(f"{type(self).__qualname__} must implement __call__")


def hook_name(fn: object) -> str:
    """A readable name for a hook: module and qualified name of the function or class."""
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    func = getattr(target, "__func__", target)  # bound methods
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(fn))}"


def describe(fn: object) -> tuple[str, bool]:
    """Check ``fn`` is usable as a hook; return its name and whether it is a coroutine function.

    Settled here, at registration, so that dispatch never inspects a hook: coroutine
    functions, bound methods and ``functools.partial`` of them, and objects (or partials of
    objects) whose ``__call__`` is a coroutine function are awaited. A plain function that
    returns a coroutine cannot be told apart here: dispatch refuses it when it does.
    """
    name = hook_name(fn)
    if not callable(fn):
        raise RegistrationError(f"a hook must be callable, not {fn!r}")
    inner: Any = fn
    while isinstance(inner, functools.partial):  # partial(obj) of an async callable object
        inner = inner.func
    call = inner if inspect.isroutine(inner) or isinstance(inner, type) else type(inner).__call__
    is_async = inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(fn)
    if inspect.isasyncgenfunction(call):
        raise RegistrationError(f"hook {name} is an async generator, not a coroutine function")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none: trust them
        return name, is_async
    try:
        signature.bind(object())
    except TypeError:
        raise RegistrationError(
            f"hook {name} must accept exactly one positional argument, the event payload "
            f"(its signature is {signature})"
        ) from None
    return name, is_async


# Code flags of functions whose call returns a generator or coroutine object, not their value.
_NOT_PLAIN: Final = (
    inspect.CO_GENERATOR
    | inspect.CO_COROUTINE
    | inspect.CO_ASYNC_GENERATOR
    | inspect.CO_ITERABLE_COROUTINE
)


def returns_none(fn: object) -> bool:
    """Tell whether calling ``fn`` can only return ``None``, from its bytecode (conservative).

    True for a Python function (or a method of one) each of whose return instructions
    returns the constant ``None``: ``RETURN_CONST None``, or a ``RETURN_VALUE`` that no jump
    lands on, right after ``LOAD_CONST None``. Anything else (a lambda returning a call, a
    ``functools.partial``, a callable object, a builtin) is False: dispatch then checks what
    the hook returned. Read once, at registration.
    """
    func = fn.__func__ if isinstance(fn, types.MethodType) else fn
    if type(func) is not types.FunctionType or func.__code__.co_flags & _NOT_PLAIN:
        return False
    previous: dis.Instruction | None = None
    for instruction in dis.get_instructions(func.__code__):
        if instruction.opname == "RETURN_CONST":  # Python 3.12 and 3.13
            if instruction.argval is not None:
                return False
        elif instruction.opname == "RETURN_VALUE":
            returns_const_none = (
                previous is not None and previous.opname == "LOAD_CONST" and previous.argval is None
            )
            if instruction.is_jump_target or not returns_const_none:
                return False
        previous = instruction
    return True
