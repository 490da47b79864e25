"""Find the object a command works on from ``MODULE:ATTRIBUTE``, or say in one line why not."""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import TypeVar

from ._errors import CommandError

__all__ = ["load_object"]

T = TypeVar("T")


def load_object(spec: str, kind: type[T], noun: str) -> T:
    """The object ``spec`` (``package.module:attribute.attribute``) names, an instance of
    ``kind`` (called ``noun`` in messages); modules are searched from the current directory
    first, as ``python -m`` does.

    This is how a subcommand finds the application it works on. Raises :class:`CommandError`
    (usage) for a malformed spec, a module not found, an import that
    fails, a missing attribute (naming the close ones) or an object of another type.
    """
    module_name, _, path = spec.partition(":")
    if not module_name or not path:
        raise CommandError(f"expected MODULE:ATTRIBUTE (for example myapp.hooks:bus), got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: object = _import(module_name)
    where = module_name
    for part in path.split("."):
        if not hasattr(obj, part):
            raise CommandError(f"{where} has no attribute {part!r}{_suggest(obj, part, kind)}")
        obj = getattr(obj, part)
        where = f"{where}:{part}" if where == module_name else f"{where}.{part}"
    if not isinstance(obj, kind):
        found = _instances(_import(module_name), kind)
        hint = f" (in {module_name}: {', '.join(found)})" if found else ""
        raise CommandError(f"{spec} is {_a(type(obj).__qualname__)}, not {noun}{hint}")
    return obj


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or name
        if name == missing or name.startswith(missing + "."):
            raise CommandError(
                f"no module named {missing!r} in {os.getcwd()} or the installed packages"
                + _close_modules(missing)
            ) from None
        raise CommandError(f"importing {name} failed: {exc}{_origin(exc)}") from None
    except Exception as exc:  # the module's own code failed: say what and where, in one line
        raise CommandError(
            f"importing {name} failed: {type(exc).__name__}: {exc}{_origin(exc)}"
        ) from None


def _origin(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return ""  # its message names the file and the line already
    frames = traceback.extract_tb(exc.__traceback__)
    return f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _close_modules(missing: str) -> str:
    parent, _, last = missing.rpartition(".")
    if parent:
        package = sys.modules.get(parent)
        places = list(getattr(package, "__path__", []))
    else:
        places = [os.getcwd()]
    names = [module.name for module in pkgutil.iter_modules(places)]
    names += [  # namespace packages: folders without __init__.py, importable all the same
        entry.name for place in places for entry in _folders(place) if entry.name.isidentifier()
    ]
    close = difflib.get_close_matches(last, names, n=3)
    prefix = f"{parent}." if parent else ""
    return f"; did you mean {', '.join(repr(prefix + c) for c in close)}?" if close else ""


def _folders(place: str) -> list[Path]:
    try:
        return [entry for entry in Path(place).iterdir() if entry.is_dir()]
    except OSError:
        return []


def _suggest(obj: object, part: str, kind: type) -> str:
    names = [name for name in dir(obj) if not name.startswith("__")]
    close = difflib.get_close_matches(part, names, n=3, cutoff=0.5)
    if close:
        return f"; did you mean {', '.join(map(repr, close))}?"
    found = _instances(obj, kind) if kind is not object else []
    return f"; it has {', '.join(found)}" if found else ""


def _instances(obj: object, kind: type, most: int = 5) -> list[str]:
    """The public attributes of ``obj`` that are ``kind`` instances, ``most`` of them."""
    items = getattr(obj, "__dict__", {}).items()
    found = sorted(n for n, v in items if isinstance(v, kind) and not n.startswith("_"))
    return found if len(found) <= most else [*found[:most], "..."]


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"
