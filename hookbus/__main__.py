"""``python -m hookbus``: the ``hookbus`` command."""

from ._cli import main

raise SystemExit(main(prog="python -m hookbus"))
