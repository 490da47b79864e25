"""The one text-table renderer of every listing: ``hookbus hooks``, ``bus.explain``, the
plugin commands."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["render_table"]


def render_table(rows: Iterable[Sequence[object]]) -> str:
    """``rows`` (a header first, if any) as columns two spaces apart, each as wide as its
    widest cell; ``None`` shows as nothing, the last column is not padded, and no line ends
    in spaces.

    >>> print(render_table([("NAME", "STATE"), ("crm", "installed"), ("sales", None)]))
    NAME   STATE
    crm    installed
    sales
    """
    cells = [["" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(_columns(cells))]
    return "\n".join(
        "  ".join(
            [*(c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)), *row[-1:]]
        ).rstrip()
        for row in cells
    )


def _columns(cells: list[list[str]]) -> int:
    return max((len(row) for row in cells), default=0)
