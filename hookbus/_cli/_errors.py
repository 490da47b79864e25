"""The one exception a subcommand raises for its user's mistakes."""

from __future__ import annotations

__all__ = ["CommandError"]


class CommandError(Exception):
    """A mistake of the command's user, told in one line (exit status 2, no traceback)."""
